"""bf16 against fp32 on the real ImageNet VGG16: every checkpoint's total loss, the two pictures' PSNR, and the pictures side by side.

    .venv/bin/python -m bench.precision [--size 300x450] [--iterations 100] [--device auto|cpu|cuda] [--output bf16-vs-fp32.png]

Runs the `styleq` preset twice from the same start, once with `precision` fp32 and once bf16, and
prints each checkpoint's relative difference of the total loss. The optimisation is chaotic, so the
pictures are compared loosely (PSNR) and written side by side (fp32 left, bf16 right) for a person to
judge. Needs the vgg16-caffe weights (`styleq weights pull vgg16-caffe`).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from PIL import Image

from bench.common import IMAGES, add_device_argument, device_name, parse_size, pick_device, synchronize
from styleq.shared.adapters.settings import load_settings
from styleq.shared.domain.params import resolve_params
from styleq.worker.downloads import load_or_pull
from styleq.worker.engine import build_backbone, transfer


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Return the peak signal-to-noise ratio of two pictures in [0, 1], in dB."""
    mse = float(((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def main(argv: list[str] | None = None) -> None:
    """Run both precisions and print the comparison."""
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=parse_size, default=(300, 450), help="HEIGHTxWIDTH (default 300x450, the preset's)")
    parser.add_argument("--iterations", type=int, default=100, help="iterations of each run (default 100)")
    parser.add_argument("--content", type=Path, default=IMAGES / "tubingen.jpg")
    parser.add_argument("--style", type=Path, default=IMAGES / "starry_night.jpg")
    parser.add_argument("--output", type=Path, default=Path("bf16-vs-fp32.png"), help="where the side-by-side picture goes")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.iterations < 10:
        parser.error("--iterations must be at least 10 (one checkpoint)")
    device = pick_device(parser, args.device)
    content, style = (Image.open(path).convert("RGB") for path in (args.content, args.style))
    values = {"size": list(args.size), "iterations": args.iterations}
    backbone = build_backbone(load_or_pull("vgg16-caffe", load_settings().models_path), resolve_params(values)).to(device)

    runs = {}
    for precision in ("fp32", "bf16"):
        checkpoints: list = []
        synchronize(device)
        started = time.perf_counter()
        result = transfer(
            content,
            style,
            resolve_params({**values, "precision": precision}),
            backbone=backbone,
            device=device,
            on_checkpoint=checkpoints.append,
        )
        synchronize(device)
        runs[precision] = result, checkpoints, time.perf_counter() - started

    (fp32, exact, fp32_s), (bf16, fast, bf16_s) = runs["fp32"], runs["bf16"]
    height, width = args.size
    print(
        f"device: {device_name(device)}; styleq preset, real vgg16-caffe, {height}x{width}, {args.iterations} iterations, "
        f"{args.content.name} x {args.style.name}"
    )
    print(f"{'iteration':>9} {'fp32 total':>12} {'bf16 total':>12} {'difference':>11}")
    worst = 0.0
    for a, b in zip(exact, fast, strict=True):
        difference = (b.total - a.total) / a.total
        worst = max(worst, abs(difference))
        print(f"{a.iteration:>9} {a.total:>12.5f} {b.total:>12.5f} {difference:>+10.2%}")
    finite = all(math.isfinite(c.total) for c in fast)
    print(f"largest difference {worst:.2%}; all bf16 losses finite: {finite}; PSNR of the pictures {psnr(fp32.tensor, bf16.tensor):.1f} dB")
    print(f"time: fp32 {fp32_s:.1f} s, bf16 {bf16_s:.1f} s ({fp32_s / bf16_s:.2f}x)")
    side = Image.new("RGB", (fp32.image.width * 2 + 8, fp32.image.height), "white")
    side.paste(fp32.image, (0, 0))
    side.paste(bf16.image, (fp32.image.width + 8, 0))
    side.save(args.output)
    print(f"pictures side by side (fp32 left, bf16 right): {args.output}")


if __name__ == "__main__":
    main()
