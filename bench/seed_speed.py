"""Time the seed notebook's own loop against the engine, in one process, on random VGG weights.

    .venv/bin/python -m bench.seed_speed [--size 300x450] [--iterations 20] [--device auto|cpu|cuda] [--skip-quality]

Two measures, each side by side with the notebook in the same run:
- seconds per iteration: the notebook's loop as written, the `seed` preset in fp32 and in bf16, and the
  `styleq` preset (VGG16, Caffe convention, its own precision), each the steady rate: after a warm-up job, one
  job of 20 + --iterations iterations, timed between its readings at iteration 20 and at its last (the first 20,
  where oneDNN builds its kernels and a GPU captures its graph, left out; `bench.overhead` shows them). That
  job's whole seconds, preprocessing, targets and its first 20 iterations included, are shown apart;
- time to quality: the notebook runs its 500 iterations; the engine then optimises the same seed
  objective its fastest way (`FAST_SEED`: the `seed` preset coarse-to-fine in the device's best precision) until that
  objective, evaluated in fp32 on the picture at a checkpoint, is no higher than the notebook's after
  its 500 iterations. The fp32 evaluations are not counted in its time.

Random weights time the same as ImageNet ones (the arithmetic does not depend on the values), so nothing
is downloaded. The notebook and the fp32 `seed` preset start from the same images and weights, so their
final losses agree.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bench.common import (
    STEADY_FROM,
    add_device_argument,
    device_name,
    parse_size,
    pick_device,
    random_vgg_features,
    steady_rate,
    styleq_backbone,
    synchronize,
)
from bench.notebook import Losses, notebook_net, run_notebook
from styleq.shared.domain.params import TransferParams, resolve_params
from styleq.worker.engine import Backbone, Control, Progress, get_convention, resolve_precision, transfer
from styleq.worker.engine.objective import Objective
from styleq.worker.engine.transfer import image_to_tensor

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"
WARMUP_ITERATIONS = 3


def run_engine(
    backbone: Backbone,
    content: Image.Image,
    style: Image.Image,
    params: TransferParams,
    device,
    *,
    cuda_graphs: bool = True,
    times: dict[int, float] | None = None,
) -> Losses:
    """Run the engine with `params`, collecting checkpoints as the CLI does, and return the last losses.

    `times`, when given, receives each checkpoint's iteration and seconds since the run began.
    """
    checkpoints: list[Progress] = []
    transfer(content, style, params, backbone=backbone, device=device, on_checkpoint=checkpoints.append, cuda_graphs=cuda_graphs)
    if times is not None:
        times.update((checkpoint.iteration, checkpoint.elapsed_s) for checkpoint in checkpoints)
    last = checkpoints[-1]
    return last.content, last.style, last.tv, last.total


# The fastest way to the seed objective found so far: coarse-to-fine in the device's best precision. Its
# first 60% of the iterations run at half the size (a quarter of the pixels, so about a quarter of the
# cost); the enlarged picture is already smoother than the notebook's after 500 iterations, and the fine
# scale goes on from there. Tried and dropped at 100x150: faster-decaying Adam schedules and L-BFGS (lr
# 0.2, 0.5, 1.0; with a strong Wolfe line search) took as many iterations as the notebook's own schedule
# or diverged (L-BFGS at lr 1: the style term weighs 1e4); bf16 alone ends a hair above the fp32 loss.
FAST_SEED: dict[str, Any] = {"precision": "auto", "scales": [0.5, 1.0]}


def fast_seed_params(size: tuple[int, int], iterations: int) -> TransferParams:
    """Return the seed objective (the `seed` preset) optimised its fastest way (`FAST_SEED`)."""
    return resolve_params({"preset": "seed", "size": list(size), "iterations": iterations, **FAST_SEED})


def time_to_loss(
    backbone: Backbone,
    content: Image.Image,
    style: Image.Image,
    params: TransferParams,
    target: float,
    device,
) -> tuple[float | None, int, float]:
    """Run `params` until the seed objective, in fp32, is at most `target` at a checkpoint.

    Returns the seconds it took (None if never reached within `params.iterations`), the iteration it
    stopped at, and the fp32 seed objective there. Time spent on the fp32 evaluations is not counted.
    """
    size = params.size
    assert isinstance(size, tuple), "time_to_loss needs an explicit (height, width) size: the seed objective is measured at it"
    exact = Objective(resolve_params({"preset": "seed", "size": list(size)}), backbone, "fp32", device)
    reached: list[tuple[float, int, float]] = []
    excluded = 0.0
    started = time.perf_counter()

    def check(checkpoint) -> Control:
        nonlocal excluded
        if checkpoint.scale < 1:
            return Control.CONTINUE  # the objective is the notebook's at full size: coarse scales are not measured
        synchronize(device)
        now = time.perf_counter()
        with torch.no_grad():
            if not exact.content_targets:
                exact.set_targets([contents], [exact.style_targets(styles)])
            total = float(exact(checkpoint.state().image.to(device))[-1][0])
        reached.append((now - started - excluded, checkpoint.iteration, total))
        excluded += time.perf_counter() - now
        return Control.STOP if total <= target else Control.CONTINUE

    contents = image_to_tensor(content, size).to(device)
    styles = image_to_tensor(style, size).to(device)
    transfer(content, style, params, backbone=backbone, device=device, on_checkpoint=check)
    seconds, iteration, total = reached[-1]
    return (seconds if total <= target else None), iteration, total


def as_written(run: Callable[[], Losses]) -> Losses:
    """Run the notebook with torch's default cuDNN settings (TF32 convolutions, no autotuning), which the engine changes."""
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = False, True
    return run()


def run_notebook_timed(
    net, content: Image.Image, style: Image.Image, size: tuple[int, int], iterations: int, device, times: dict[int, float]
) -> Losses:
    """Run the notebook as written, putting each of its readings' iteration and seconds since the call into `times`."""
    readings: list[tuple[int, float, float]] = []
    losses = as_written(lambda: run_notebook(net, content, style, size, iterations, device, readings))
    times.update((iteration, seconds) for iteration, _, seconds in readings)
    return losses


def timed(run: Callable[[], Losses], device: torch.device) -> tuple[float, Losses]:
    """Return the wall-clock seconds of `run()` (with CUDA work finished on both sides) and its result."""
    synchronize(device)
    started = time.perf_counter()
    result = run()
    synchronize(device)
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> None:
    """Time the loops and print seconds per iteration, ratios, final losses and time to the notebook's loss."""
    parser = argparse.ArgumentParser(prog="python -m bench.seed_speed", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=parse_size, default=(300, 450), help="HEIGHTxWIDTH (default 300x450, the notebook's)")
    parser.add_argument(
        "--iterations",
        type=int,
        default=20,
        help=f"iterations timed for each loop's steady rate, after its first {STEADY_FROM} (default 20)",
    )
    parser.add_argument(
        "--quality-iterations", type=int, default=500, help="the notebook's iterations for the time to quality (default 500, its own)"
    )
    parser.add_argument("--skip-quality", action="store_true", help="time the iterations only")
    add_device_argument(parser)
    parser.add_argument("--content", type=Path, default=IMAGES / "rainier.jpg")
    parser.add_argument("--style", type=Path, default=IMAGES / "autumn-oak.jpg")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.quality_iterations < 10:
        parser.error("--iterations must be at least 1 and --quality-iterations at least 10")
    device = pick_device(parser, args.device)
    images = []
    for path in (args.content, args.style):
        if not path.is_file():
            parser.error(f"image {path} not found (pass --content/--style)")
        images.append(Image.open(path).convert("RGB"))
    content, style = images
    # The notebook's own float(l) on a tensor that requires grad; a warning there says nothing about speed.
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")

    # Built once, untimed, as a long-lived worker would; the timed calls cover preprocessing, targets and the loop.
    vgg19 = random_vgg_features("vgg19")
    net = notebook_net(vgg19, device)
    seed = resolve_params({"preset": "seed", "size": list(args.size)})
    styleq = resolve_params({"preset": "styleq", "size": list(args.size)})
    seed_backbone = Backbone("vgg19", vgg19, get_convention("torchvision"), seed.layers).to(device)
    styleq_network = styleq_backbone(styleq, device)
    precision = resolve_precision(styleq.precision, device)
    # Each run takes its iterations and a dict that receives its readings: iteration -> seconds since it began.
    runs: dict[str, Callable[[int, dict[int, float]], Losses]] = {
        "notebook": lambda n, times: run_notebook_timed(net, content, style, args.size, n, device, times),
        "seed fp32": lambda n, times: run_engine(seed_backbone, content, style, replace(seed, iterations=n), device, times=times),
        "seed bf16": lambda n, times: run_engine(
            seed_backbone, content, style, replace(seed, iterations=n, precision="bf16"), device, times=times
        ),
        f"styleq ({precision})": lambda n, times: run_engine(
            styleq_network, content, style, replace(styleq, iterations=n), device, times=times
        ),
    }
    if device.type == "cuda":
        # What the captured CUDA graphs bring: the same loops, each kernel launched from Python.
        runs["seed bf16 eager"] = lambda n, times: run_engine(
            seed_backbone, content, style, replace(seed, iterations=n, precision="bf16"), device, cuda_graphs=False, times=times
        )
        runs["styleq eager"] = lambda n, times: run_engine(
            styleq_network, content, style, replace(styleq, iterations=n), device, cuda_graphs=False, times=times
        )
    for run in runs.values():
        timed(partial(run, WARMUP_ITERATIONS, {}), device)  # allocator, cuDNN/oneDNN kernel choice, as a worker's earlier job
    job_iterations = STEADY_FROM + args.iterations
    results: dict[str, tuple[float, Losses]] = {}
    per_iteration: dict[str, float] = {}
    for name, run in runs.items():
        times: dict[int, float] = {}
        results[name] = timed(partial(run, job_iterations, times), device)
        per_iteration[name], start = steady_rate(times)
        assert start == STEADY_FROM, f"{name} has no reading at iteration {STEADY_FROM}: {sorted(times)}"

    height, width = args.size
    print(f"device: {device_name(device)}; bf16 native here: {resolve_precision('auto', device) == 'bf16'}")
    print(f"size {height}x{width}; each loop: a {WARMUP_ITERATIONS}-iteration warm-up job, then a timed job of {job_iterations} iterations")
    print(
        f"s/iteration: the steady rate, over iterations {STEADY_FROM + 1}..{job_iterations} of the timed job (its first {STEADY_FROM}, "
        "where oneDNN builds its kernels and a GPU captures its graph, left out)"
    )
    print(
        f"{'loop':<16} {'s/iteration':>12} {'whole job s':>12} {'notebook/this':>14} {'content':>12} {'style':>12} {'tv':>12} {'total':>12}"
    )
    for name, (seconds, losses) in results.items():
        speedup = per_iteration["notebook"] / per_iteration[name]
        print(
            f"{name:<16} {per_iteration[name]:>12.5f} {seconds:>12.3f} {speedup:>13.2f}x " + " ".join(f"{value:>12.6g}" for value in losses)
        )
    print(
        f"whole job s: the timed job of {job_iterations} iterations whole, preprocessing, targets and its first {STEADY_FROM} "
        "iterations included (the engine time of such a job); losses at its end"
    )
    theirs, ours = results["notebook"][1], results["seed fp32"][1]
    difference = max(abs(a - b) / max(abs(a), 1e-30) for a, b in zip(theirs, ours))
    print(f"largest relative difference, notebook vs seed fp32: {difference:.2e}")
    if args.skip_quality:
        return

    readings: list[tuple[int, float, float]] = []
    timed(lambda: as_written(lambda: run_notebook(net, content, style, args.size, args.quality_iterations, device, readings)), device)
    _, target, notebook_seconds = readings[-1]
    fast = fast_seed_params(args.size, args.quality_iterations)
    fast_seconds, iteration, reached = time_to_loss(seed_backbone, content, style, fast, target, device)
    speed = ", ".join(
        f"{name}={value} ({resolve_precision(value, device) if name == 'precision' else value})" for name, value in FAST_SEED.items()
    )
    print(f"\ntime to the notebook's {args.quality_iterations}-iteration loss ({target:.6g}), seed objective:")
    print(f"{'loop':<16} {'seconds':>10} {'iterations':>11} {'loss':>12} {'this/notebook':>14}")
    print(f"{'notebook':<16} {notebook_seconds:>10.2f} {args.quality_iterations:>11} {target:>12.6g} {1:>13.3f}x")
    shown = f"{fast_seconds:>10.2f}" if fast_seconds is not None else f"{'not reached':>10}"
    ratio = f"{fast_seconds / notebook_seconds:>13.3f}x" if fast_seconds is not None else f"{'-':>14}"
    print(f"{'styleq way':<16} {shown} {iteration:>11} {reached:>12.6g} {ratio}")
    print(f"styleq way: the seed preset with {speed}; iterations per scale {list(fast.iterations_per_scale())}")


if __name__ == "__main__":
    main()
