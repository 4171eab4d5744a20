"""The CPU's Gram products of bf16 features as bf16 products with fp32 sums, against plain fp32 products, side by side.

    .venv/bin/python -m bench.cpu_gram [--size 300x450] [--iterations 8] [--rounds 3]

Runs the `styleq` preset in bf16 on the CPU (random VGG16 weights: only the arithmetic's speed is measured), the
two ways alternating in one process, and prints each round's seconds per iteration (the time of a run of
--iterations more than a 3-iteration one, so targets and set-up cancel out), the means and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from statistics import mean

import torch
from PIL import Image

from bench.common import IMAGES, device_name, parse_size, styleq_backbone
from styleq.shared.domain.params import resolve_params
from styleq.worker.engine import losses, native_bf16, transfer

SHORT_RUN = 3


@contextlib.contextmanager
def _fp32_products() -> Iterator[None]:
    """Leave oneDNN's fp32 products as they are: the way without bf16 products."""
    yield


def main(argv: list[str] | None = None) -> None:
    """Time both ways, alternating, and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_gram", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=parse_size, default=(300, 450), help="HEIGHTxWIDTH (default 300x450)")
    parser.add_argument("--iterations", type=int, default=8, help="iterations timed per round and way (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running both ways (default 3)")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.rounds < 1:
        parser.error("--iterations and --rounds must be at least 1")
    device = torch.device("cpu")
    if not native_bf16(device):
        print("note: this CPU has no native bf16 (neither AMX nor AVX-512 BF16); both ways are emulated and slow")
    content = Image.open(IMAGES / "rainier.jpg").convert("RGB")
    style = Image.open(IMAGES / "autumn-oak.jpg").convert("RGB")
    params = resolve_params({"size": list(args.size), "precision": "bf16", "checkpoint_every": 1000})
    backbone = styleq_backbone(params, device)
    ways = {"fp32 products": _fp32_products, "bf16 products, fp32 sums": losses._bf16_cpu_products}
    engine_way = losses._bf16_cpu_products

    def seconds(iterations: int) -> float:
        started = time.perf_counter()
        transfer(content, style, replace(params, iterations=iterations), backbone=backbone, device=device)
        return time.perf_counter() - started

    seconds(SHORT_RUN)  # allocator, oneDNN's kernel choice
    per_iteration: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for _ in range(args.rounds):
            for name, way in ways.items():
                losses._bf16_cpu_products = way
                per_iteration[name].append((seconds(SHORT_RUN + args.iterations) - seconds(SHORT_RUN)) / args.iterations)
    finally:
        losses._bf16_cpu_products = engine_way

    height, width = args.size
    print(
        f"device: {device_name(device)}; styleq preset {height}x{width}, bf16, {args.iterations} iterations a round, "
        f"{args.rounds} rounds alternating"
    )
    print(f"{'Gram products':<26} {'s/iteration by round':>28} {'mean':>8} {'ratio':>6}")
    base = mean(per_iteration["fp32 products"])
    for name, values in per_iteration.items():
        rounds = " ".join(f"{value:.4f}" for value in values)
        print(f"{name:<26} {rounds:>28} {mean(values):>8.4f} {mean(values) / base:>6.3f}")


if __name__ == "__main__":
    main()
