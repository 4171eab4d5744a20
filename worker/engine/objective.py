"""The weighted loss of a batch of candidate pictures, each against its own content and style targets."""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, reduce
from operator import add

import torch
from PIL import Image

from styleq.shared.domain.params import TransferParams

from .backbone import Backbone
from .losses import content_losses, gram_matrices, moment_losses, style_losses, tv_losses, with_ridge
from .precision import network_precision

# Under `normalize_losses`, a moments loss is its distance over the style's mean channel energy E|x|^2 / C, times
# this: the factor that lets the default preset's style_weight pull about as hard as with Gram matrices. At the
# content picture, where a run starts, the style term's gradient is then 0.7 to 1.4 times the Gram loss's on
# real VGG16 (bench/style_loss.py); docs/GALLERY.md shows the two pictures side by side.
MOMENT_SCALE = 2.0
# Holding the content distance (`fine_content_hold`): after each iteration a held picture's content weight is
# multiplied by exp(HOLD_GAIN x (distance / goal - 1)), so 10% over the goal raises it by about 5% an iteration;
# fast enough to settle within the 60 iterations a finer scale gets, slow enough not to swing with Adam's momentum.
# The factor stays within HOLD_FACTOR_RANGE of the scale's starting weight.
HOLD_GAIN = 0.5
HOLD_FACTOR_RANGE = (0.1, 10.0)


@dataclass(frozen=True)
class Gaussian:
    """A style layer's target for the moments loss: its covariance with its ridge added (losses.with_ridge), and that one's square root."""

    covariance: torch.Tensor
    root: torch.Tensor


@dataclass(frozen=True)
class StyleTargets:
    """One style image's statistics at the style layers, and the scales that normalise their losses.

    The fields given to the constructor are statistics of the style's features, each a tuple with one
    tensor per style layer, and they mix linearly: a blend of styles is their weighted sum (`blend`), the
    target of their pooled pixels. `grams` are the seed's Gram matrices, E[x x^T] over the pixels divided by
    the channels: second moments, so they mix where covariances would not. `means`, the channel means E[x],
    are there for `style_loss="moments"` only. What the constructor derives (the normalising `scales`, and the
    covariances and their square roots, `gaussians`) is computed again from whatever statistics it is given,
    so a blend's are those of its mix, never a mix of them.
    """

    grams: tuple[torch.Tensor, ...]
    means: tuple[torch.Tensor, ...] | None = None
    scales: tuple[torch.Tensor, ...] = field(init=False)

    def __post_init__(self) -> None:
        # Frozen: set once, here, from the statistics.
        scale = _energy_scale if self.means is None else _moment_scale
        object.__setattr__(self, "scales", tuple(scale(gram) for gram in self.grams))

    def moment_means(self) -> tuple[torch.Tensor, ...]:
        """Return each layer's channel means, which only targets for the moments loss have."""
        if self.means is None:
            raise ValueError("these style targets have no means: they were made for style_loss='gram'")
        return self.means

    @cached_property
    def gaussians(self) -> tuple[Gaussian, ...]:
        """Return each layer's target Gaussian for the moments loss (computed once per targets, in fp64)."""
        return tuple(_gaussian(gram, mean) for gram, mean in zip(self.grams, self.moment_means()))

    @classmethod
    def blend(cls, targets: Sequence[StyleTargets], weights: Sequence[float]) -> StyleTargets:
        """Mix several styles' targets into one: each statistic the weighted sum of theirs, weights normalised to sum 1.

        Raises:
            ValueError: no targets, not one weight each, or a weight that is not a positive number.
        """
        if not targets or len(weights) != len(targets):
            raise ValueError(f"blending needs one weight per style's targets, got {len(weights)} weights for {len(targets)} targets")
        if any(not 0 < weight < math.inf for weight in weights):
            raise ValueError(f"blend weights must be positive numbers, got {list(weights)!r}")
        if len(targets) == 1:
            return targets[0]  # exactly the style's own targets, bit for bit
        total = math.fsum(weights)
        shares = [weight / total for weight in weights]

        def mix(statistics: Sequence[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
            return tuple(sum(share * layer for share, layer in zip(shares, layers)) for layers in zip(*statistics))

        means = [one.means for one in targets if one.means is not None]
        # The constructor's fields are the statistics that mix; `means` only where every style has them (gram targets have none).
        return cls(mix([one.grams for one in targets]), mix(means) if len(means) == len(targets) else None)


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


def sum_tensors(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """Return the sum of `terms`, at least one: what `sum` adds, typed as the tensor it is (`sum` starts from the int 0)."""
    return reduce(add, terms)


def picture_size(picture: torch.Tensor) -> tuple[int, int]:
    """Return the (height, width) of an (N, C, H, W) picture."""
    height, width = picture.shape[-2:]
    return height, width


def _energy_scale(target: torch.Tensor) -> torch.Tensor:
    return 1 / target.square().mean().clamp_min(1e-12)


def _moment_scale(gram: torch.Tensor) -> torch.Tensor:
    # tr(gram) is E|x|^2 / C: the style's mean channel energy, the units a per-channel W2^2 comes in.
    return MOMENT_SCALE / gram.diagonal().sum().clamp_min(1e-12)


def _gaussian(gram: torch.Tensor, mean: torch.Tensor) -> Gaussian:
    mean64 = mean.double()
    covariance = gram.double() * mean.shape[0] - torch.outer(mean64, mean64)
    covariance = with_ridge((covariance + covariance.T)[None] / 2)[0]
    # Once per target, so exactly: fp64 eigenvalues (any that rounding pushes below zero taken as zero).
    values, vectors = torch.linalg.eigh(covariance)
    root = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    return Gaussian(covariance.float(), ((root + root.T) / 2).float())


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
        # style_loss="moments" only: per layer, (N, C), (N, C, C) and (N, C, C).
        self.style_means: list[torch.Tensor] = []
        self.style_covariances: list[torch.Tensor] = []
        self.style_roots: list[torch.Tensor] = []
        # `fine_content_hold` only: per job, its content weight's factor and the content distance it holds, each
        # a (1,) device tensor its run owns and this objective updates in place (`follow`). Empty: fixed weights.
        self.content_factors: list[torch.Tensor] = []
        self.content_goals: list[torch.Tensor] = []

    def network_input(self, image: torch.Tensor, *, from_pixels: bool = False) -> torch.Tensor:
        """Return what the network reads for `image` (the backbone lays it out for its precision)."""
        if from_pixels or self.params.image_space == "pixels":
            image = self.backbone.convention.normalize(image)
        return image

    def _features(self, image: torch.Tensor, layers: Sequence[str], *, from_pixels: bool = False) -> dict[str, torch.Tensor]:
        with network_precision(self.precision, self.device):
            return self.backbone(self.network_input(image, from_pixels=from_pixels), layers)

    def style_targets(self, style: torch.Tensor, *, cache: TargetCache | None = None, key: Hashable = None) -> StyleTargets:
        """Return the targets of one (1, 3, H, W) style picture in [0, 1], from `cache` when it holds `key`."""
        full_key = None
        if cache is not None and key is not None:
            p = self.params
            full_key = (
                key,
                tuple(style.shape[-2:]),
                p.weights,
                self.backbone.architecture,
                p.style_layers,
                self.precision,
                str(self.device),
                p.style_loss,
            )
            if (found := cache.get(full_key)) is not None:
                return found
        moments = self.params.style_loss == "moments"
        with torch.inference_mode():
            if moments:
                features = self._features(style, self.params.style_layers, from_pixels=True)
                grams = [gram_matrices(features[name])[0] for name in self.params.style_layers]
                means = [features[name].float().flatten(2).mean(-1)[0] for name in self.params.style_layers]
            else:
                grams, means = self._style_grams(style), []
        # Outside inference mode, so autograd may save them for the backward pass.
        grams = [g.clone() for g in grams]
        targets = StyleTargets(tuple(grams), tuple(m.clone() for m in means) if moments else None)
        if cache is not None and full_key is not None:
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
        self.content_scales = [torch.stack([_energy_scale(one) for one in layer]) for layer in self.content_targets]
        self.set_style_targets(styles)

    def set_style_targets(self, styles: Sequence[StyleTargets]) -> None:
        """Fix the batch's style targets, one `StyleTargets` per job."""
        layers = range(len(self.params.style_layers))
        self.style_grams = [torch.stack([style.grams[i] for style in styles]) for i in layers]
        self.style_scales = [torch.stack([style.scales[i] for style in styles]) for i in layers]
        if self.params.style_loss == "moments":
            self.style_means = [torch.stack([style.moment_means()[i] for style in styles]) for i in layers]
            gaussians = [[style.gaussians[i] for style in styles] for i in layers]
            self.style_covariances = [torch.stack([g.covariance for g in layer]) for layer in gaussians]
            self.style_roots = [torch.stack([g.root for g in layer]) for layer in gaussians]

    def hold(self, factors: Sequence[torch.Tensor], goals: Sequence[torch.Tensor]) -> None:
        """Weigh each job's content by its `factors` entry, adjusted by `follow` towards the content distance `goals` gives."""
        self.content_factors, self.content_goals = list(factors), list(goals)

    def follow(self, content: torch.Tensor) -> None:
        """Move each held job's content factor towards its goal, given the (N,) content terms of the iteration just run.

        In place and on the device, without reading anything back: a captured CUDA graph replays it.
        """
        if not self.content_factors:
            return
        low, high = HOLD_FACTOR_RANGE
        for row, (factor, goal) in enumerate(zip(self.content_factors, self.content_goals)):
            distance = content[row : row + 1].detach() / (factor * self.params.content_weight)
            factor.mul_(torch.exp(HOLD_GAIN * (distance / goal - 1))).clamp_(low, high)

    def _content_factors(self, rows: slice) -> torch.Tensor | float:
        """Return the held factors of the jobs at `rows`, (n,), or 1 where the weights are fixed."""
        if not self.content_factors:
            return 1.0
        held = self.content_factors[rows]
        return held[0] if len(held) == 1 else torch.cat(held)

    def keep(self, indices: Sequence[int]) -> None:
        """Drop every picture's targets but those at `indices` (jobs that left the batch)."""
        if self.content_factors:
            self.hold([self.content_factors[i] for i in indices], [self.content_goals[i] for i in indices])
        index = torch.tensor(list(indices), dtype=torch.long, device=self.device)
        for targets in (
            self.content_targets,
            self.content_scales,
            self.style_grams,
            self.style_scales,
            self.style_means,
            self.style_covariances,
            self.style_roots,
        ):
            targets[:] = [t.index_select(0, index) for t in targets]

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return each picture's (content, style, tv, total), each of shape (N,), for the optimised batch `image`."""
        # A GPU runs the whole batch through the network at once: that is where batching pays. A CPU's
        # convolutions fill its cores with one picture already, and oneDNN picks kernels by batch size,
        # so there each picture goes through alone and gets exactly the arithmetic of a run alone.
        chunk = image.shape[0] if self.device.type == "cuda" else 1
        parts = [self._losses(image[start : start + chunk], start) for start in range(0, image.shape[0], chunk)]
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
        if p.style_loss == "moments":
            targets = zip(self.style_means, self.style_covariances, self.style_roots)
            styles = [moment_losses(features[n], *(t[rows] for t in target)) for n, target in zip(p.style_layers, targets)]
        else:
            styles = [style_losses(features[n], t[rows]) for n, t in zip(p.style_layers, self.style_grams)]
        if p.normalize_losses:
            contents = [loss * scale[rows] for loss, scale in zip(contents, self.content_scales)]
            styles = [loss * scale[rows] for loss, scale in zip(styles, self.style_scales)]
        content = sum_tensors(loss * p.content_weight for loss in contents) * self._content_factors(rows)
        style = sum_tensors(loss * p.style_weight for loss in styles)
        tv = tv_losses(image) * p.tv_weight
        return content, style, tv, p.style_repeats * style + content + tv
