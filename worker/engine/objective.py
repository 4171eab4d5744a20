"""The weighted loss of a batch of candidate pictures, each against its own content and style targets."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from .backbone import Backbone
from .losses import content_losses, gram_matrices, style_losses, tv_losses
from .precision import network_precision
from shared.params import TransferParams


@dataclass(frozen=True)
class StyleTargets:
    """One style image's Gram matrices at the style layers, and the scales that normalise their losses."""

    grams: tuple[torch.Tensor, ...]
    scales: tuple[torch.Tensor, ...]


class TargetCache:
    """Style targets kept by a worker process between jobs, least recently used first out.

    A service sees the same few style pictures again and again; their targets cost a forward pass
    of the network each, which a cache hit skips.
    """

    def __init__(self, max_entries: int = 32) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, StyleTargets] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> StyleTargets | None:
        """Return the targets stored under `key`, marking them recently used, or None."""
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found

    def put(self, key: Hashable, targets: StyleTargets) -> None:
        """Store targets under `key`, dropping the least recently used beyond `max_entries`."""
        self._entries[key] = targets
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def image_digest(image: Image.Image) -> str:
    """Return a hash of a picture's pixels, mode and size: what a style target depends on."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _energy_scale(target: torch.Tensor) -> torch.Tensor:
    return 1 / target.square().mean().clamp_min(1e-12)


class Objective:
    """The seed's weighted loss, for a batch of pictures each with its own targets.

    The network runs in `precision` (bf16 under autocast, or fp32); Gram matrices and every loss are
    fp32. Each picture's total depends on its own pixels only, so the gradient of the batch's summed
    total with respect to one picture is that picture's own gradient.
    """

    def __init__(self, params: TransferParams, backbone: Backbone, precision: str, device: torch.device) -> None:
        self.params = params
        self.backbone = backbone
        self.precision = precision
        self.device = device
        self.content_targets: list[torch.Tensor] = []  # per layer, (N, C, H, W)
        self.content_scales: list[torch.Tensor] = []  # per layer, (N,)
        self.style_grams: list[torch.Tensor] = []  # per layer, (N, C, C)
        self.style_scales: list[torch.Tensor] = []  # per layer, (N,)

    def network_input(self, image: torch.Tensor, *, from_pixels: bool = False) -> torch.Tensor:
        """Return what the network reads for `image`, in the backbone's memory layout."""
        if from_pixels or self.params.image_space == "pixels":
            image = self.backbone.convention.normalize(image)
        return image.contiguous(memory_format=self.backbone.memory_format)

    def _features(self, image: torch.Tensor, layers: Sequence[str], *, from_pixels: bool = False) -> dict[str, torch.Tensor]:
        with network_precision(self.precision, self.device):
            return self.backbone(self.network_input(image, from_pixels=from_pixels), layers)

    def style_targets(self, style: torch.Tensor, *, cache: TargetCache | None = None, key: Hashable = None) -> StyleTargets:
        """Return the targets of one (1, 3, H, W) style picture in [0, 1], from `cache` when it holds `key`."""
        full_key = None
        if cache is not None and key is not None:
            p = self.params
            full_key = (key, tuple(style.shape[-2:]), p.weights, self.backbone.architecture, p.style_layers, self.precision, str(self.device))
            if (found := cache.get(full_key)) is not None:
                return found
        with torch.inference_mode():
            grams = self._style_grams(style)
        # Outside inference mode, so autograd may save them for the backward pass.
        grams = [g.clone() for g in grams]
        targets = StyleTargets(tuple(grams), tuple(_energy_scale(g) for g in grams))
        if full_key is not None:
            cache.put(full_key, targets)
        return targets

    def _style_grams(self, style: torch.Tensor) -> list[torch.Tensor]:
        features = self._features(style, self.params.style_layers, from_pixels=True)
        return [gram_matrices(features[name])[0] for name in self.params.style_layers]

    def set_targets(self, contents: Sequence[torch.Tensor], styles: Sequence[StyleTargets]) -> None:
        """Fix the batch's targets: one (1, 3, H, W) content picture and one `StyleTargets` per job."""
        # One picture at a time, as a run alone computes them: computed once per job, they cost little.
        with torch.inference_mode():
            each = [self._features(content, self.params.content_layers, from_pixels=True) for content in contents]
            content_targets = [torch.cat([features[name].float() for features in each]) for name in self.params.content_layers]
        self.content_targets = [t.clone() for t in content_targets]
        self.content_scales = [
            torch.stack([_energy_scale(one) for one in layer]) for layer in self.content_targets
        ]
        self.set_style_targets(styles)

    def set_style_targets(self, styles: Sequence[StyleTargets]) -> None:
        """Fix the batch's style targets, one `StyleTargets` per job."""
        layers = range(len(self.params.style_layers))
        self.style_grams = [torch.stack([style.grams[i] for style in styles]) for i in layers]
        self.style_scales = [torch.stack([style.scales[i] for style in styles]) for i in layers]

    def keep(self, indices: Sequence[int]) -> None:
        """Drop every picture's targets but those at `indices` (jobs that left the batch)."""
        index = torch.tensor(list(indices), dtype=torch.long, device=self.device)
        for targets in (self.content_targets, self.content_scales, self.style_grams, self.style_scales):
            targets[:] = [t.index_select(0, index) for t in targets]

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return each picture's (content, style, tv, total), each of shape (N,), for the optimised batch `image`."""
        # A GPU runs the whole batch through the network at once: that is where batching pays. A CPU's
        # convolutions fill its cores with one picture already, and oneDNN picks kernels by batch size,
        # so there each picture goes through alone and gets exactly the arithmetic of a run alone.
        chunk = image.shape[0] if self.device.type == "cuda" else 1
        parts = [self._losses(image[start:start + chunk], start) for start in range(0, image.shape[0], chunk)]
        if len(parts) == 1:
            return parts[0]
        content, style, tv, total = (torch.cat(values) for values in zip(*parts))
        return content, style, tv, total

    def evaluate(self, image: torch.Tensor, row: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the losses, each of shape (1,), of one picture against the targets of the job at `row` of the batch."""
        return self._losses(image, row)

    def _losses(self, image: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.params
        rows = slice(first, first + image.shape[0])
        features = self._features(image, p.layers)
        contents = [content_losses(features[n], t[rows]) for n, t in zip(p.content_layers, self.content_targets)]
        styles = [style_losses(features[n], t[rows]) for n, t in zip(p.style_layers, self.style_grams)]
        if p.normalize_losses:
            contents = [loss * scale[rows] for loss, scale in zip(contents, self.content_scales)]
            styles = [loss * scale[rows] for loss, scale in zip(styles, self.style_scales)]
        content = sum(loss * p.content_weight for loss in contents)
        style = sum(loss * p.style_weight for loss in styles)
        tv = tv_losses(image) * p.tv_weight
        return content, style, tv, p.style_repeats * style + content + tv
