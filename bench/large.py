"""A large picture with the `styleq` preset: its coarse-to-fine schedule, time per scale, peak memory, tiles, and one scale beside it.

    .venv/bin/python -m bench.large [--size 1024] [--content rainier.jpg] [--style autumn-oak.jpg] [--device auto|cpu|cuda]
        [--iterations N] [--max-pass-pixels N] [--one-scale] [--output DIR]

Runs the job as a worker would (real vgg16-caffe weights, precision "auto", the automatic schedule written out by
`with_schedule`), each scale in one pass unless it has more pixels than --max-pass-pixels (default on CUDA: what
the device's free memory holds by the memory model, as the worker decides; on a CPU: no limit). Prints the time and
iterations of each scale, the whole job's wall time and peak memory (CUDA: the allocator's peak; CPU: the
process's peak resident set), and the full-size style loss (normalised Gram loss in fp32, the style seen at the
picture's area). With --one-scale, the same job in one scale for the same wall time beside it, and the ratio of
the two style losses: what coarse-to-fine buys at equal cost. Needs `styleq weights pull vgg16-caffe`.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from PIL import Image

from bench.common import IMAGES, add_device_argument, device_name, gib, pick_device, synchronize
from bench.style_distance import gram_distance
from styleq.shared.adapters.settings import load_settings
from styleq.shared.domain.params import resolve_params
from styleq.worker.downloads import load_or_pull
from styleq.worker.engine import Control, build_backbone, transfer
from styleq.worker.engine.objective import Objective
from styleq.worker.engine.tiles import needs_tiles, one_pass_pixels, plan_tiles


def peak_memory(device: torch.device) -> float:
    """The peak bytes this process has held: the CUDA allocator's, or the resident set's on a CPU."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.large", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, help="the output's long side (default 4096 on CUDA, 1024 on a CPU)")
    parser.add_argument("--content", default="rainier.jpg")
    parser.add_argument("--style", default="autumn-oak.jpg")
    parser.add_argument("--iterations", type=int, help="the job's iterations (default the preset's)")
    parser.add_argument("--max-pass-pixels", type=int, help="tile a scale with more pixels (default: by free CUDA memory; none on a CPU)")
    parser.add_argument("--one-scale", action="store_true", help="also run one scale for the same wall time, and compare")
    parser.add_argument("--output", help="a folder for the pictures")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    device = pick_device(parser, args.device)
    size = args.size or (4096 if device.type == "cuda" else 1024)

    content, style = (Image.open(IMAGES / name).convert("RGB") for name in (args.content, args.style))
    # A checkpoint every iteration: each scale's time is read off them (a host sync each, small beside a large picture's step).
    values = {"size": size, "checkpoint_every": 1, **({"iterations": args.iterations} if args.iterations else {})}
    params = resolve_params(values).with_schedule(*content.size)
    backbone = build_backbone(load_or_pull(params.weights, load_settings().models_path), params, device)
    height, width = params.output_size(*content.size)
    max_pass_pixels = args.max_pass_pixels
    if max_pass_pixels is None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        max_pass_pixels = one_pass_pixels(free, "bf16" if params.precision == "auto" else params.precision, height * width)
    tiles = (
        len(plan_tiles((height, width), max_pass_pixels, backbone, params.layers).tiles)
        if needs_tiles((height, width), max_pass_pixels)
        else 1
    )
    print(f"{device_name(device)}; {args.content} in the style of {args.style}, {width}x{height}, precision {params.precision}")
    print(
        f"schedule: scales {list(params.scales)}, iterations {list(params.iterations_per_scale())}; "
        f"full size in {tiles} tile(s) (max_pass_pixels {max_pass_pixels})"
    )

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    marks: list[tuple[float, int, float]] = []  # (scale, iteration, seconds) at each checkpoint
    synchronize(device)
    started = time.perf_counter()
    result = transfer(
        content,
        style,
        params,
        backbone=backbone,
        device=device,
        max_pass_pixels=max_pass_pixels,
        on_checkpoint=lambda c: marks.append((c.scale, c.iteration, time.perf_counter() - started)),
    )
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = peak_memory(device)
    objective = Objective(params, backbone, "fp32", device)
    ours = gram_distance(result.image, style, objective)

    print("scale  iterations  seconds")
    previous_iteration, previous_seconds = 0, 0.0
    for scale in params.scales:
        at_scale = [mark for mark in marks if mark[0] == scale]
        last_iteration, last_seconds = at_scale[-1][1], at_scale[-1][2]
        print(f"{scale:5.3f}  {last_iteration - previous_iteration:10d}  {last_seconds - previous_seconds:7.1f}")
        previous_iteration, previous_seconds = last_iteration, last_seconds
    print(f"whole job: {seconds:.1f} s, peak memory {gib(peak)}; full-size style loss {ours:.4g}")
    if args.output:
        result.image.save(f"{args.output}/coarse-to-fine-{size}.png")

    if args.one_scale:
        one_scale_params = resolve_params({"size": size, "scales": [1.0], "iterations": 20000, "checkpoint_every": 1})
        synchronize(device)
        one_started = time.perf_counter()
        one_scale = transfer(
            content,
            style,
            one_scale_params,
            backbone=backbone,
            device=device,
            max_pass_pixels=max_pass_pixels,
            on_checkpoint=lambda c: Control.STOP if time.perf_counter() - one_started >= seconds else None,
        )
        theirs = gram_distance(one_scale.image, style, objective)
        print(
            f"one scale for the same {time.perf_counter() - one_started:.1f} s: {one_scale.iteration} iterations, full-size style loss "
            f"{theirs:.4g}; coarse-to-fine's is {ours / theirs:.2f}x of it"
        )
        if args.output:
            one_scale.image.save(f"{args.output}/one-scale-{size}.png")


if __name__ == "__main__":
    main()
