"""Where an iteration's time goes: the engine's most expensive operations, by device time, under torch.profiler.

    .venv/bin/python -m bench.profile [--size 300x450] [--iterations 10] [--precision auto] [--device auto|cpu|cuda] [--rows 20]

Runs the `styleq` preset eagerly (no CUDA graph, so every kernel is seen) on random VGG16 weights,
after a warm-up, and prints torch.profiler's table sorted by self device time (CPU time on a CPU).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from PIL import Image
from torch.profiler import ProfilerActivity, profile

from bench.common import IMAGES, add_device_argument, device_name, parse_size, pick_device, styleq_backbone, synchronize
from styleq.shared.domain.params import resolve_params
from styleq.worker.engine import resolve_precision, transfer


def main(argv: list[str] | None = None) -> None:
    """Profile a few iterations and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=parse_size, default=(300, 450), help="HEIGHTxWIDTH (default 300x450)")
    parser.add_argument("--iterations", type=int, default=10, help="iterations profiled (default 10)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="auto")
    parser.add_argument("--rows", type=int, default=20, help="operations shown (default 20)")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.rows < 1:
        parser.error("--iterations and --rows must be at least 1")
    device = pick_device(parser, args.device)
    content = Image.open(IMAGES / "rainier.jpg").convert("RGB")
    style = Image.open(IMAGES / "autumn-oak.jpg").convert("RGB")
    params = resolve_params({"size": list(args.size), "precision": args.precision, "checkpoint_every": args.iterations})
    backbone = styleq_backbone(params, device)

    def run(iterations: int) -> None:
        transfer(content, style, replace(params, iterations=iterations), backbone=backbone, device=device, cuda_graphs=False)
        synchronize(device)

    run(3)  # allocator, kernel choice
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        run(args.iterations)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    height, width = args.size
    print(
        f"device: {device_name(device)}; styleq preset {height}x{width}, {resolve_precision(args.precision, device)}, "
        f"{args.iterations} eager iterations (targets included)"
    )
    print(profiler.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
