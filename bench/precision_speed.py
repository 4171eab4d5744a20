"""Seconds per iteration of the `styleq` preset in bf16 and in fp32 on this CPU, at several sizes, and what `auto` picks.

    .venv/bin/python -m bench.precision_speed [--threads 1,2] [--sizes 32x48,64x96,150x225,300x450]

Native bf16 is not always the faster: the ratio printed (bf16 / fp32, below 1 where bf16 wins) is what
`auto`'s own one-second timing (`worker.engine.precision.bf16_pays`) stands in for. Each size runs a short
warm-up job in each precision first (oneDNN builds its kernels then), then a timed one. Needs the vgg16-caffe
weights (`styleq weights pull vgg16-caffe`).
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image

from bench.common import IMAGES, device_name, parse_ints, parse_size
from styleq.shared.adapters.settings import load_settings
from styleq.shared.domain.params import resolve_params
from styleq.worker.downloads import load_or_pull
from styleq.worker.engine import build_backbone, resolve_precision, transfer

# Iterations timed at each size: about the same seconds at each.
ITERATIONS = {1: 100, 2: 60, 3: 30}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.precision_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=parse_ints, default=[1, 2], help="torch thread counts, e.g. 1,2")
    parser.add_argument(
        "--sizes", type=lambda t: [parse_size(v) for v in t.split(",")], default=[(32, 48), (64, 96), (150, 225), (300, 450)]
    )
    args = parser.parse_args(argv)
    weights = load_or_pull("vgg16-caffe", load_settings().models_path)
    content, style = (Image.open(IMAGES / name).convert("RGB") for name in ("rainier.jpg", "autumn-oak.jpg"))
    print(f"{device_name(torch.device('cpu'))}; auto picks {resolve_precision('auto', 'cpu')} here")
    print(f"{'threads':>7} {'size':>9} {'bf16 s/it':>10} {'fp32 s/it':>10} {'bf16/fp32':>9}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for height, width in args.sizes:
            iterations = ITERATIONS[min(3, max(1, round((height * width / 3000) ** 0.25)))]
            seconds = {}
            for precision in ("bf16", "fp32"):
                # One scale at the size asked: above 512 px the automatic schedule would time a mix of smaller scales.
                values = {"size": [height, width], "precision": precision, "scales": [1.0]}
                params = resolve_params({**values, "iterations": iterations})
                backbone = build_backbone(weights, params)
                transfer(content, style, resolve_params({**values, "iterations": 10}), backbone=backbone)  # warm-up
                started = time.perf_counter()
                transfer(content, style, params, backbone=backbone)
                seconds[precision] = (time.perf_counter() - started) / iterations
            print(
                f"{threads:>7} {f'{height}x{width}':>9} {seconds['bf16']:>10.4f} {seconds['fp32']:>10.4f} {seconds['bf16'] / seconds['fp32']:>9.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
