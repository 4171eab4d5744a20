"""The moments style loss on the real ImageNet VGG16: its fp32 accuracy, what its ridge costs, its pull against the Gram loss's, its time.

    .venv/bin/python -m bench.style_loss [--size 300x450] [--content rainier.jpg] [--style autumn-oak.jpg] [--device auto|cpu|cuda]

For each style layer of the `styleq` preset, prints the content picture's distance to the style under
`style_loss="moments"` as the engine computes it (fp32, Newton-Schulz, ridged), against an fp64
eigendecomposition of the same ridged distance and of the distance without the ridge, all over the layer's
energy E|x|^2/C; the style's distance to itself; and the time of one loss and its gradient. Then the norm of
the style term's gradient at the content picture under each loss, with the preset's normalisation: the
pull the style has on the first step. Needs the vgg16-caffe weights (`styleq weights pull vgg16-caffe`).
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image

from bench.common import IMAGES, add_device_argument, device_name, parse_size, pick_device, synchronize
from bench.wasserstein import exact_distance
from styleq.shared.adapters.settings import load_settings
from styleq.shared.domain.params import resolve_params
from styleq.worker.downloads import load_or_pull
from styleq.worker.engine import build_backbone
from styleq.worker.engine.losses import moment_losses
from styleq.worker.engine.objective import Objective, _gaussian
from styleq.worker.engine.transfer import image_to_tensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(300, 450))
    parser.add_argument("--content", default="rainier.jpg")
    parser.add_argument("--style", default="autumn-oak.jpg")
    add_device_argument(parser)
    args = parser.parse_args()
    device = pick_device(parser, args.device)
    params = resolve_params({"size": list(args.size), "precision": "fp32"})
    backbone = build_backbone(load_or_pull("vgg16-caffe", load_settings().models_path), params, device)
    content = image_to_tensor(Image.open(IMAGES / args.content).convert("RGB"), args.size).to(device)
    style = image_to_tensor(Image.open(IMAGES / args.style).convert("RGB"), args.size).to(device)
    print(f"{args.content} x {args.style}, {args.size[0]}x{args.size[1]}, {device_name(device)}")

    with torch.no_grad():
        content_features = backbone(backbone.convention.normalize(content), params.style_layers)
        style_features = backbone(backbone.convention.normalize(style), params.style_layers)
    print("layer     fp32    fp64 ridged  fp64 unridged  ridge moves  style->style  loss+gradient")
    for name in params.style_layers:
        flat = style_features[name][0].flatten(1).float()
        gaussian = _gaussian(flat @ flat.T / flat.numel(), flat.mean(1))
        targets = (flat.mean(1)[None], gaussian.covariance[None], gaussian.root[None])
        energy = float(flat.square().mean())
        features = content_features[name].clone().requires_grad_(True)
        synchronize(device)
        start = time.perf_counter()
        moment_losses(features, *targets).sum().backward()
        synchronize(device)
        seconds = time.perf_counter() - start
        ours = float(moment_losses(content_features[name], *targets)) / energy
        ridged = exact_distance(content_features[name], style_features[name], ridge=True) / energy
        plain = exact_distance(content_features[name], style_features[name], ridge=False) / energy
        itself = float(moment_losses(style_features[name], *targets)) / energy
        print(
            f"{name:8} {ours:7.5f}  {ridged:7.5f} ({abs(ours - ridged):.0e})  {plain:7.5f}  {100 * (ridged - plain) / plain:+10.1f} %  {itself:+12.1e}  {1000 * seconds:9.0f} ms"
        )

    for loss in ("gram", "moments"):
        loss_params = resolve_params({"size": list(args.size), "precision": "fp32", "style_loss": loss})
        objective = Objective(loss_params, backbone, "fp32", device)
        objective.set_targets([content], [objective.style_targets(style)])
        picture = content.clone().requires_grad_(True)
        style_term = objective(picture)[1]
        style_term.sum().backward()
        gradient = picture.grad
        assert gradient is not None  # backward() just filled it
        print(
            f"{loss:8} style term {float(style_term.detach()):9.4g} at the content picture, its gradient's norm {float(gradient.norm()):.4g}"
        )


if __name__ == "__main__":
    main()
