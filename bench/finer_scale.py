"""Ways of running a coarse-to-fine job's finer scales, compared on one pair from the same first scale.

    python -m bench.finer_scale --content rainier.jpg --style autumn-oak.jpg --size 1024 \
        --variant 'preset={}' --variant 'start at 1x={"fine_content_factor": 1}' --variant 'longer={"finer_iterations": 50}'

The pair's first scale runs once, as the `styleq` preset's automatic schedule has it at `--size`, and its
state is saved (in `--output`, reused by a later run with the same pair, size and first-scale settings). Each
variant then resumes from that state with its own parameters (JSON overrides of the preset, only those that
act after the first scale: `FINER_SCALE_PARAMETERS`, and `finer_iterations`), so the variants differ only where
they differ, and a variant costs the finer scales' time alone. Each picture is judged as `bench/quality.py`
judges (fp32 vgg16-caffe, at the picture's size), with the style distance split by layer, relu1_1 to relu5_1
(the shares add up to it), which says what texture a variant gains or loses. docs/QUALITY.md has the runs.

Needs `styleq weights pull vgg16-caffe`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bench.common import IMAGES
from bench.quality import STYLE_LAYERS, Judge
from styleq.shared.adapters.settings import load_settings
from styleq.shared.domain.params import TransferParams, resolve_params
from styleq.worker.downloads import load_or_pull
from styleq.worker.engine import Control, build_backbone, transfer
from styleq.worker.engine.transfer import TransferState
from styleq.worker.engine.weights import LoadedWeights

# What changes only what happens after the first scale; anything else would make the saved first scale another job's.
FINER_SCALE_PARAMETERS = frozenset({"fine_content_factor", "fine_content_hold", "fine_lr_factor", "rescale_moments", "photo_detail"})


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """Parse NAME=JSON into a variant's name and its overrides, refusing any that would change the first scale."""
    name, _, overrides = text.partition("=")
    try:
        values = json.loads(overrides or "{}")
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"variant {name!r}: its overrides are not JSON ({error})") from None
    if not name or not isinstance(values, dict):
        raise argparse.ArgumentTypeError(f"a variant is NAME=JSON object, got {text!r}")
    unknown = sorted(set(values) - FINER_SCALE_PARAMETERS - {"finer_iterations"})
    if unknown:
        allowed = ", ".join(sorted(FINER_SCALE_PARAMETERS | {"finer_iterations"}))
        raise argparse.ArgumentTypeError(
            f"variant {name!r}: {', '.join(unknown)} would change the first scale; a variant may set {allowed}"
        )
    return name, values


def variant_params(base: TransferParams, overrides: dict[str, Any]) -> TransferParams:
    """Return `base` (scheduled) with a variant's overrides; `finer_iterations` sets every finer scale's count."""
    values = dict(overrides)
    finer = values.pop("finer_iterations", None)
    # `replace` checks the values as a job's parameters are checked.
    params = dataclasses.replace(base, **values)
    if finer is not None:
        counts = base.iterations_per_scale()
        scale_iterations = (counts[0], *([int(finer)] * (len(counts) - 1)))
        params = dataclasses.replace(params, scale_iterations=scale_iterations, iterations=sum(scale_iterations))
    return params


def first_scale(
    base: TransferParams, content: Image.Image, style: Image.Image, cache: Path, weights: LoadedWeights, device: torch.device
) -> tuple[TransferState, float]:
    """Return the state at the end of `base`'s first scale and the seconds it took, from `cache` when it holds them."""
    if cache.is_file():
        saved = torch.load(cache, weights_only=False)
        return saved["state"], saved["seconds"]
    end = base.iterations_per_scale()[0]
    captured: list[TransferState] = []

    def stop_at_first_scale_end(progress: Any) -> Control | None:
        if progress.iteration != end:
            return None
        captured.append(progress.capture())
        return Control.STOP

    started = time.perf_counter()
    transfer(
        content,
        style,
        dataclasses.replace(base, checkpoint_every=end),
        backbone=build_backbone(weights, base, device),
        device=device,
        on_checkpoint=stop_at_first_scale_end,
    )
    seconds = time.perf_counter() - started
    torch.save({"state": captured[0], "seconds": seconds}, cache)
    return captured[0], seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--content", required=True, help="a picture of --images")
    parser.add_argument("--style", required=True, help="a picture of --images")
    parser.add_argument("--size", type=int, default=1024, help="the output's long side (default 1024): it must go coarse to fine")
    parser.add_argument("--iterations", type=int, default=None, help="the job's budget (default the preset's)")
    parser.add_argument("--variant", type=parse_variant, action="append", required=True, help="NAME=JSON overrides; repeat")
    parser.add_argument("--images", type=Path, default=IMAGES, help="the pictures' folder (default ../shared/images)")
    parser.add_argument("--output", type=Path, default=Path("bench-finer-scale"))
    args = parser.parse_args(argv)

    content = Image.open(args.images / args.content).convert("RGB")
    style = Image.open(args.images / args.style).convert("RGB")
    base = resolve_params({"size": args.size}, iterations=args.iterations).with_schedule(*content.size)
    if len(base.resolved_scales()) < 2:
        parser.error(f"at --size {args.size} the job is one pass: no finer scale to vary")
    device = torch.device("cpu")
    weights = load_or_pull("vgg16-caffe", load_settings().models_path)
    judge = Judge(weights, device)
    args.output.mkdir(parents=True, exist_ok=True)
    pair = f"{Path(args.content).stem}-{Path(args.style).stem}-{args.size}-{base.iterations}"
    state, first_seconds = first_scale(base, content, style, args.output / f"{pair}-first-scale.pt", weights, device)
    print(
        f"{pair}: scales {list(base.resolved_scales())}, iterations {list(base.iterations_per_scale())}, first scale {first_seconds:.0f} s"
    )
    layers = " ".join(f"{name:>7}" for name in STYLE_LAYERS)
    print(f"{'variant':<28} {'content':>7} {'style':>7}  {layers}  finer s")
    for name, overrides in args.variant:
        params = variant_params(base, overrides)
        started = time.perf_counter()
        result = transfer(
            content,
            style,
            params,
            backbone=build_backbone(weights, params, device),
            device=device,
            state=dataclasses.replace(state, params=params.to_dict()),
        )
        seconds = time.perf_counter() - started
        result.image.save(args.output / f"{pair}-{name.replace(' ', '_').replace('/', '_')}.png")
        content_distance, style_distance, shares = judge.measure_by_layer(result.image, content, style)
        print(
            f"{name:<28} {content_distance:7.3f} {style_distance:7.4f}  "
            + " ".join(f"{shares[layer]:7.4f}" for layer in STYLE_LAYERS)
            + f"  {seconds:7.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
