"""Measure one job's peak memory by picture size and precision, and fit the linear model of worker/engine/memory.py.

    .venv/bin/python -m bench.memory [--device auto|cpu|cuda] [--sizes 256,512,1024] [--precisions fp32,bf16] [--memory 80GiB]

The `styleq` preset (VGG16 up to relu5_1, Caffe convention, channels-last) on random weights, square
pictures of each size, a few iterations of `transfer` (the peak is reached in the first backward pass
and the first optimiser step; later iterations repeat it). What is measured is the memory one job adds
on top of a resident backbone, as a worker holds it between jobs:

- CUDA: `torch.cuda.max_memory_allocated()` during the run minus `memory_allocated()` before it, after
  `reset_peak_memory_stats()` (tensors only: the CUDA context and the allocator's cached, unused
  blocks are not counted; the peak reserved by the allocator is printed beside it).
- CPU: each measurement in a fresh process (so no earlier run's peak or allocator cache counts):
  its peak resident set (`getrusage` ru_maxrss) minus its resident set after building the backbone,
  with the kernel's high-water mark reset at that point where /proc allows it.

Then it fits bytes = FIXED_BYTES + BYTES_PER_PIXEL x height x width per precision by least squares,
and prints the largest square and 300x450-shaped pictures that fit in --memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import IMAGES, add_device_argument, device_name, gib, parse_bytes, parse_ints, pick_device, styleq_backbone, synchronize
from styleq.shared.domain.params import resolve_params
from styleq.worker.engine import Backbone, transfer

CPU_MEMORY_DEFAULT = 16 * 2**30
# Iterations per measurement. bf16 on a CPU without AVX-512 BF16 or AMX is emulated and slow, and one
# iteration already holds every buffer a job ever holds (Adam's moments are made in its first step).
ITERATIONS = {("cuda", "fp32"): 3, ("cuda", "bf16"): 3, ("cpu", "fp32"): 2, ("cpu", "bf16"): 1}


@dataclass
class Measurement:
    """One job's peak memory at one size and precision, or why there is none."""

    precision: str
    side: int
    peak_bytes: int | None
    reserved_bytes: int | None = None
    note: str = ""

    @property
    def pixels(self) -> int:
        return self.side * self.side


def load_pair() -> tuple[Image.Image, Image.Image]:
    """Return the seed's content and style pictures."""
    content, style = (Image.open(IMAGES / name).convert("RGB") for name in ("rainier.jpg", "autumn-oak.jpg"))
    return content, style


def run_job(
    side: int, precision: str, iterations: int, backbone: Backbone, device: torch.device, pair: tuple[Image.Image, Image.Image]
) -> None:
    """Run one square job of `side` pixels in `precision` for `iterations` iterations."""
    params = resolve_params(
        {"preset": "styleq", "size": [side, side], "iterations": iterations, "precision": precision, "checkpoint_every": iterations}
    )
    content, style = pair
    transfer(content, style, params, backbone=backbone, device=device)


def backbone_bytes(backbone: Backbone) -> int:
    """Return the bytes of the backbone's weights."""
    return sum(p.numel() * p.element_size() for p in backbone.parameters())


def measure_cuda(
    sides: list[int], precision: str, iterations: int, backbone: Backbone, device: torch.device, pair: tuple[Image.Image, Image.Image]
) -> list[Measurement]:
    """Measure each size in this process on CUDA, stopping at the first that runs out of memory."""
    found = []
    for side in sides:
        gc.collect()
        synchronize(device)
        torch.cuda.empty_cache()
        before_allocated, before_reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            run_job(side, precision, iterations, backbone, device, pair)
            synchronize(device)
        except torch.OutOfMemoryError as error:
            found.append(Measurement(precision, side, None, note=f"out of memory: {str(error).splitlines()[0][:80]}"))
            gc.collect()
            torch.cuda.empty_cache()
            break
        peak = torch.cuda.max_memory_allocated(device) - before_allocated
        reserved = torch.cuda.max_memory_reserved(device) - before_reserved
        found.append(Measurement(precision, side, peak, reserved))
        print(f"  {precision} {side}x{side}: {gib(peak)}", file=sys.stderr, flush=True)
    return found


def current_rss() -> int:
    """Return this process's resident set now, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's record of this process's peak resident set (Linux clear_refs 5); tell whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def child_measure(side: int, precision: str, iterations: int) -> dict[str, int | bool]:
    """Measure one CPU job in this (fresh) process: peak RSS minus the RSS with the backbone built and the pictures loaded."""
    params = resolve_params({"preset": "styleq", "precision": precision})
    backbone = styleq_backbone(params, torch.device("cpu"))
    pair = load_pair()
    gc.collect()
    base = current_rss()
    reset = reset_peak_rss()
    run_job(side, precision, iterations, backbone, torch.device("cpu"), pair)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"peak_bytes": peak - base, "base_bytes": base, "reset": reset}


def measure_cpu(sides: list[int], precision: str, iterations: int, threads: int) -> list[Measurement]:
    """Measure each size in its own fresh process on the CPU."""
    found = []
    for side in sides:
        command = [sys.executable, "-m", "bench.memory", "--child", f"{side},{precision},{iterations}", "--threads", str(threads)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if done.returncode != 0:
            # The kernel's OOM killer ends the child with SIGKILL; anything else is a bug worth seeing.
            if done.returncode == -9:
                found.append(Measurement(precision, side, None, note="killed (out of memory?)"))
                break
            raise SystemExit(f"measuring {precision} {side}x{side} failed:\n{done.stderr[-3000:]}")
        values = json.loads(done.stdout.strip().splitlines()[-1])
        note = "" if values["reset"] else "peak since process start"
        found.append(Measurement(precision, side, values["peak_bytes"], note=note))
        print(f"  {precision} {side}x{side}: {gib(values['peak_bytes'])}", file=sys.stderr, flush=True)
    return found


def fit(measurements: list[Measurement]) -> tuple[float, float] | None:
    """Return (bytes per pixel, fixed bytes) of the least-squares line through the measurements, or None under two points."""
    points = [(m.pixels, m.peak_bytes) for m in measurements if m.peak_bytes is not None]
    if len(points) < 2:
        return None
    pixels, peaks = np.array(points, dtype=np.float64).T
    (per_pixel, fixed), *_ = np.linalg.lstsq(np.stack([pixels, np.ones_like(pixels)], axis=1), peaks, rcond=None)
    return float(per_pixel), float(fixed)


def largest_fit(memory: float, per_pixel: float, fixed: float, aspect: float) -> tuple[int, int]:
    """Return the largest (height, width) with width = height x `aspect` whose one job fits in `memory` bytes."""
    pixels = max(memory - fixed, 0.0) / per_pixel
    height = int((pixels / aspect) ** 0.5)
    return height, int(height * aspect)


def main(argv: list[str] | None = None) -> None:
    """Measure every size and precision, then print the table, the fitted coefficients and what fits."""
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n", 1)[0])
    add_device_argument(parser)
    parser.add_argument(
        "--sizes", type=parse_ints, help="square sides in pixels (default 256,512,1024,2048,4096 on CUDA; 128,256,384,512 on a CPU)"
    )
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated, from fp32 and bf16 (default both)")
    parser.add_argument("--iterations", type=int, help="iterations per measurement (default 3 on CUDA; on a CPU 2 in fp32, 1 in bf16)")
    parser.add_argument("--memory", type=parse_bytes, help="memory to fit pictures in (default: the GPU's total; 16GiB on a CPU)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default torch's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # SIDE,PRECISION,ITERATIONS: one CPU measurement, as JSON
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        side, precision, iterations = args.child.split(",")
        print(json.dumps(child_measure(int(side), precision, int(iterations))))
        return
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or any(p not in ("fp32", "bf16") for p in precisions):
        parser.error("--precisions takes fp32, bf16 or both")
    device = pick_device(parser, args.device)
    sides = args.sizes or ([256, 512, 1024, 2048, 4096] if device.type == "cuda" else [128, 256, 384, 512])
    memory = args.memory or (torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else CPU_MEMORY_DEFAULT)

    params = resolve_params({"preset": "styleq"})
    backbone = styleq_backbone(params, device)
    weights = backbone_bytes(backbone)
    results: dict[str, list[Measurement]] = {}
    for precision in precisions:
        iterations = args.iterations or ITERATIONS[(device.type, precision)]
        if device.type == "cuda":
            results[precision] = measure_cuda(sides, precision, iterations, backbone, device, load_pair())
        else:
            results[precision] = measure_cpu(sides, precision, iterations, args.threads)

    print(f"device: {device_name(device)}")
    what = (
        "CUDA max_memory_allocated during the job minus memory_allocated before it (backbone resident)"
        if device.type == "cuda"
        else "peak RSS of a fresh process minus its RSS with the backbone built"
    )
    print(f"styleq preset, square pictures; measured: {what}; backbone weights {weights / 2**20:.0f} MiB (not counted)")
    header = f"{'precision':<9} {'size':>9} {'pixels':>9} {'peak':>11} {'bytes/pixel':>11} {'fit error':>9}" + (
        f" {'peak reserved':>13}" if device.type == "cuda" else ""
    )
    print(header)
    print("-" * len(header))
    coefficients: dict[str, tuple[float, float]] = {}
    for precision, found in results.items():
        line = fit(found)
        if line is not None:
            coefficients[precision] = line
        for m in found:
            if m.peak_bytes is None:
                print(f"{precision:<9} {f'{m.side}x{m.side}':>9} {m.pixels:>9} {m.note}")
                continue
            error = f"{(line[1] + line[0] * m.pixels) / m.peak_bytes - 1:+.1%}" if line else "-"
            reserved = f" {gib(m.reserved_bytes):>13}" if m.reserved_bytes is not None else ""
            print(
                f"{precision:<9} {f'{m.side}x{m.side}':>9} {m.pixels:>9} {gib(m.peak_bytes):>11} {m.peak_bytes / m.pixels:>11.0f} {error:>9}{reserved}"
                + (f"  ({m.note})" if m.note else "")
            )
    if "fp32" in coefficients and "bf16" in coefficients:
        print(f"bf16/fp32 bytes per pixel: {coefficients['bf16'][0] / coefficients['fp32'][0]:.2f}")
    print(
        f"fit (least squares): peak = FIXED_BYTES + BYTES_PER_PIXEL x height x width; fits in {gib(memory)} "
        f"(less the backbone's {weights / 2**20:.0f} MiB):"
    )
    print(f"{'precision':<9} {'bytes/pixel':>11} {'fixed':>12} {'largest square':>14} {'largest 300x450-shaped':>22} {'300x450 jobs':>12}")
    for precision, (per_pixel, fixed) in coefficients.items():
        room = memory - weights
        square = largest_fit(room, per_pixel, fixed, 1.0)
        shaped = largest_fit(room, per_pixel, fixed, 450 / 300)
        jobs = int(max(room - fixed, 0) // (300 * 450 * per_pixel))
        print(
            f"{precision:<9} {per_pixel:>11.0f} {fixed / 1e6:>10.1f} MB {f'{square[0]}x{square[1]}':>14} "
            f"{f'{shaped[0]}x{shaped[1]}':>22} {jobs:>12}"
        )
    if coefficients:
        print("for worker/engine/memory.py:")
        print("BYTES_PER_PIXEL: dict[str, float] = {" + ", ".join(f'"{p}": {c[0]:.0f}.0' for p, c in coefficients.items()) + "}")
        print("FIXED_BYTES: dict[str, float] = {" + ", ".join(f'"{p}": {c[1] / 1e6:.0f}e6' for p, c in coefficients.items()) + "}")


if __name__ == "__main__":
    main()
