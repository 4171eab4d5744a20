"""Tiling: a picture too large for one pass of the network is optimised in overlapping tiles against one global target.

Each tile is the part of the picture it owns (its interior) with a margin around it as wide as the
network's receptive field reaches. The features the interior owns are then exactly the whole
picture's features there, because every pixel they read is in the tile, and the interiors' features
partition the picture's. So:

- the picture's Gram matrix at a style layer is the sum of the interiors' feature products (one
  forward pass per tile, without gradients), divided by the whole picture's channels x pixels;
- from it the global style loss and its gradient with respect to each Gram matrix, D; a tile's
  forward pass with gradients then backpropagates <D, its interior's feature products> (plus its
  content term), whose gradient with respect to the tile's pixels is exactly its share of the global
  loss's. Summed over the whole crops (margins included) the shares are the untiled gradient, so
  there is nothing to blend and no seam to hide.

Only the activations are per tile; the picture, its gradient and the optimiser's moments are full size.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from styleq.shared.domain.memory import BYTES_PER_PIXEL, FIXED_BYTES, HEADROOM, MIN_PASS_PIXELS, RESIDENT_BYTES_PER_PIXEL
from styleq.shared.domain.params import TransferParams

from .backbone import Backbone
from .losses import tv_losses
from .objective import Objective, StyleTargets, picture_size, sum_tensors


def one_pass_pixels(free_bytes: int | None, precision: str, output_pixels: int, *, headroom: float = HEADROOM) -> int | None:
    """Return the most pixels one pass of the network may take in `free_bytes` (the memory model), or None if unknown.

    The one place that decides, from memory, how large a pass may be: the worker sizes its tiles by it.
    """
    if free_bytes is None:
        return None
    room = free_bytes * headroom - FIXED_BYTES[precision] - RESIDENT_BYTES_PER_PIXEL * output_pixels
    return max(MIN_PASS_PIXELS, int(room // BYTES_PER_PIXEL[precision]))


def needs_tiles(size: tuple[int, int], max_pass_pixels: int | None) -> bool:
    """Tell whether a picture of (height, width) is too large for one pass of at most `max_pass_pixels` (None: no limit)."""
    return max_pass_pixels is not None and size[0] * size[1] > max_pass_pixels


@dataclass(frozen=True)
class Tile:
    """A box of the picture that one pass computes (`crop`) and the part of it that pass owns (`interior`).

    Both are (top, bottom, left, right) in the picture's pixels; the crop's top and left, and the
    interior's edges inside the picture, are multiples of the deepest layer's stride, so every layer's
    feature grid in the tile lines up with the whole picture's.
    """

    crop: tuple[int, int, int, int]
    interior: tuple[int, int, int, int]

    @property
    def pixels(self) -> int:
        top, bottom, left, right = self.crop
        return (bottom - top) * (right - left)

    def cut(self, image: torch.Tensor) -> torch.Tensor:
        """Return the tile's crop of a (N, C, H, W) picture."""
        top, bottom, left, right = self.crop
        return image[:, :, top:bottom, left:right]

    def owned(self, features: torch.Tensor, stride: int) -> torch.Tensor:
        """Return the features of the tile's interior from the tile's features at a layer of `stride` pixels."""
        top, _, left, _ = self.crop
        # Floor division: the bottom and right interiors end at the picture's edge, whose last pixels no pool keeps.
        rows = slice((self.interior[0] - top) // stride, (self.interior[1] - top) // stride)
        columns = slice((self.interior[2] - left) // stride, (self.interior[3] - left) // stride)
        return features[:, :, rows, columns]


@dataclass(frozen=True)
class TilePlan:
    """How a picture of `size` is cut into tiles, and each layer's stride for cutting their features."""

    size: tuple[int, int]
    tiles: tuple[Tile, ...]
    strides: dict[str, int]
    margin: int
    rows: tuple[int, ...]  # the interiors' edges down the picture, 0 and height included
    columns: tuple[int, ...]

    def feature_pixels(self, layer: str) -> int:
        """Return how many positions the whole picture has at `layer` (VGG's pools round down)."""
        stride = self.strides[layer]
        return (self.size[0] // stride) * (self.size[1] // stride)


def _geometry(backbone: Backbone, layers: Sequence[str]) -> tuple[dict[str, int], int, int]:
    """Return each layer's stride in pixels, how far any layer's features reach past their own pixels, and the alignment."""
    stride, reach, strides = 1, 0, {}
    deepest = max(backbone.names.index(layer) for layer in layers)
    for name, module in zip(backbone.names[: deepest + 1], backbone.features):
        if isinstance(module, nn.Conv2d):
            reach += (module.kernel_size[0] // 2) * module.dilation[0] * stride
        elif isinstance(module, nn.MaxPool2d):
            kernel = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
            step = module.stride if isinstance(module.stride, int) else module.stride[0]
            reach += (kernel - 1) * stride
            stride *= step
        strides[name] = stride
    used = {layer: strides[layer] for layer in layers}
    return used, reach, max(used.values())


def _split(length: int, pieces: int, align: int) -> list[int] | None:
    """Return the edges of `pieces` near-equal parts of `length`, inner edges on multiples of `align`, or None."""
    edges = [0, *(round(length * i / pieces / align) * align for i in range(1, pieces)), length]
    return edges if all(a < b for a, b in itertools.pairwise(edges)) else None


def _extents(edges: list[int], margin: int, length: int) -> list[int]:
    return [min(length, end + margin) - max(0, start - margin) for start, end in itertools.pairwise(edges)]


def plan_tiles(size: tuple[int, int], max_pass_pixels: int | None, backbone: Backbone, layers: Sequence[str]) -> TilePlan:
    """Cut a picture of (height, width) into the fewest pixels of passes, none over `max_pass_pixels`.

    Raises:
        ValueError: a budget under the smallest tile the network's margins allow.
    """
    strides, reach, align = _geometry(backbone, layers)
    margin = math.ceil(reach / align) * align
    height, width = size
    budget = max_pass_pixels if max_pass_pixels is not None else height * width
    options = []
    # The tiles form a grid, so the crops' total is (sum of their heights) x (sum of their widths).
    splits = [[(pieces, edges) for pieces in range(1, length // align + 2) if (edges := _split(length, pieces, align))] for length in size]
    for rows in splits[0]:
        heights = _extents(rows[1], margin, height)
        for columns in splits[1]:
            widths = _extents(columns[1], margin, width)
            if max(heights) * max(widths) <= budget:
                options.append((sum(heights) * sum(widths), rows[0] * columns[0], rows[1], columns[1]))
                break  # more columns only cost more
    if not options:
        smallest = min(height, align + 2 * margin) * min(width, align + 2 * margin)
        raise ValueError(
            f"max_pass_pixels must be at least {smallest} for these layers (a tile and its {margin}-pixel margins), got {budget}"
        )
    _, _, row_edges, column_edges = min(options)
    tiles = tuple(
        Tile(
            crop=(max(0, top - margin), min(height, bottom + margin), max(0, left - margin), min(width, right + margin)),
            interior=(top, bottom, left, right),
        )
        for top, bottom in itertools.pairwise(row_edges)
        for left, right in itertools.pairwise(column_edges)
    )
    return TilePlan(size=(height, width), tiles=tiles, strides=strides, margin=margin, rows=tuple(row_edges), columns=tuple(column_edges))


class TiledObjective(Objective):
    """The objective of `Objective`, for pictures of one size too large for one pass, computed tile by tile.

    Its losses and its gradient are the untiled ones (up to rounding): every picture of a batch goes
    through alone, tile after tile, and the optimiser sees one full-size picture as before.
    """

    def __init__(
        self,
        params: TransferParams,
        backbone: Backbone,
        precision: str,
        device: torch.device,
        size: tuple[int, int],
        max_pass_pixels: int,
    ) -> None:
        super().__init__(params, backbone, precision, device)
        self.max_pass_pixels = max_pass_pixels
        self.plan = plan_tiles(size, max_pass_pixels, backbone, params.layers)
        self.tile_contents: list[list[list[torch.Tensor]]] = []  # per job, per tile, per content layer: its interior's target
        self.content_counts: list[int] = []  # per content layer: the whole picture's channels x positions

    def _plan_for(self, image: torch.Tensor) -> TilePlan:
        size = picture_size(image)
        return self.plan if size == self.plan.size else plan_tiles(size, self.max_pass_pixels, self.backbone, self.params.layers)

    def _style_grams(self, style: torch.Tensor) -> list[torch.Tensor]:
        plan = self._plan_for(style)
        if len(plan.tiles) == 1:
            return super()._style_grams(style)
        return self.global_grams(style, plan, from_pixels=True)

    def global_grams(self, image: torch.Tensor, plan: TilePlan | None = None, *, from_pixels: bool = False) -> list[torch.Tensor]:
        """Return the Gram matrices of a whole (1, 3, H, W) picture at the style layers, one tile at a time, without gradients."""
        plan = plan or self._plan_for(image)
        layers = self.params.style_layers
        sums: list[torch.Tensor] = []
        with torch.no_grad():
            for number, tile in enumerate(plan.tiles):
                features = self._features(tile.cut(image), layers, from_pixels=from_pixels)
                for i, name in enumerate(layers):
                    flat = _scaled(tile.owned(features[name], plan.strides[name]), plan.feature_pixels(name))
                    gram = flat @ flat.T
                    if number == 0:
                        sums.append(gram)
                    else:
                        sums[i] = sums[i] + gram
        return sums

    def set_targets(self, contents: Sequence[torch.Tensor], styles: Sequence[StyleTargets]) -> None:
        """Fix the batch's targets: the content pictures' features tile by tile, and one `StyleTargets` per job."""
        layers, plan = self.params.content_layers, self.plan
        self.tile_contents, scales = [], []
        with torch.inference_mode():
            for content in contents:
                owned = []
                for tile in plan.tiles:
                    features = self._features(tile.cut(content), layers, from_pixels=True)
                    owned.append([tile.owned(features[name], plan.strides[name]).float() for name in layers])
                # The mean square of the whole target, as `Objective` normalises by: every position is in one interior.
                self.content_counts = [part.shape[1] * plan.feature_pixels(name) for part, name in zip(owned[0], layers)]
                scales.append(
                    [
                        1 / (sum_tensors(parts[i].square().sum() for parts in owned) / count).clamp_min(1e-12)
                        for i, count in enumerate(self.content_counts)
                    ]
                )
                self.tile_contents.append(owned)
        # Outside inference mode, so autograd may save them for the backward pass.
        self.tile_contents = [[[target.clone() for target in parts] for parts in owned] for owned in self.tile_contents]
        self.content_scales = [torch.stack([job[i] for job in scales]).clone() for i in range(len(layers))]
        self.set_style_targets(styles)

    def keep(self, indices: Sequence[int]) -> None:
        """Drop every picture's targets but those at `indices` (jobs that left the batch)."""
        super().keep(indices)
        self.tile_contents = [self.tile_contents[i] for i in indices]

    def _losses(self, image: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = [self._picture_losses(image[offset : offset + 1], first + offset) for offset in range(image.shape[0])]
        content, style, tv, total = (torch.cat(values) for values in zip(*rows))
        return content, style, tv, total

    def _picture_losses(self, picture: torch.Tensor, row: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return one picture's (content, style, tv, total), each (1,), whose total carries the untiled gradient."""
        p = self.params
        grams = [g.requires_grad_(True) for g in self.global_grams(picture.detach())]
        with torch.enable_grad():
            style = self._style_loss(grams, row)
            # How the total changes with each Gram matrix: what every tile's share of the style gradient is weighed by.
            slopes = torch.autograd.grad(p.style_repeats * style, grams)
        gradient = torch.zeros_like(picture)
        content = picture.new_zeros((), dtype=torch.float32)
        for index, tile in enumerate(self.plan.tiles):
            crop = tile.cut(picture).detach().requires_grad_(True)
            with torch.enable_grad():
                content_part, surrogate = self._tile_share(crop, tile, slopes, self.tile_contents[row][index], row)
                (crop_gradient,) = torch.autograd.grad(content_part + surrogate, crop)
            top, bottom, left, right = tile.crop
            gradient[:, :, top:bottom, left:right] += crop_gradient
            content = content + content_part.detach()
        tv = tv_losses(picture) * p.tv_weight
        network = (picture * gradient).sum()
        # Worth nothing, but its gradient with respect to the picture is the network terms' gradient.
        carried = network - network.detach()
        style = style.detach()
        total = p.style_repeats * style + content + tv + carried
        return content.reshape(1), style.reshape(1), tv, total.reshape(1)

    def style_loss(self, picture: torch.Tensor, row: int = 0) -> torch.Tensor:
        """Return the style loss of a whole (1, 3, H, W) picture against the targets of the job at `row`, without gradients."""
        return self._style_loss(self.global_grams(picture.detach()), row)

    def _style_loss(self, grams: Sequence[torch.Tensor], row: int) -> torch.Tensor:
        p = self.params
        layer_losses = [torch.square(g - t[row]).mean() for g, t in zip(grams, self.style_grams)]
        if p.normalize_losses:
            layer_losses = [loss * scale[row] for loss, scale in zip(layer_losses, self.style_scales)]
        return sum_tensors(loss * p.style_weight for loss in layer_losses)

    def _tile_share(
        self,
        crop: torch.Tensor,
        tile: Tile,
        slopes: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
        row: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return a tile's part of the content loss and the surrogate whose gradient is its part of the style loss's."""
        p, plan = self.params, self.plan
        features = self._features(crop, p.layers)
        surrogate = crop.new_zeros((), dtype=torch.float32)
        for slope, name in zip(slopes, p.style_layers):
            flat = _scaled(tile.owned(features[name], plan.strides[name]), plan.feature_pixels(name))
            surrogate = surrogate + (slope * (flat @ flat.T)).sum()
        content = crop.new_zeros((), dtype=torch.float32)
        for i, (name, target) in enumerate(zip(p.content_layers, targets)):
            loss = torch.square(tile.owned(features[name], plan.strides[name]).float() - target).sum() / self.content_counts[i]
            if p.normalize_losses:
                loss = loss * self.content_scales[i][row]
            content = content + loss * p.content_weight
        return content * self._content_factors(slice(row, row + 1)), surrogate


def _scaled(features: torch.Tensor, pixels: int) -> torch.Tensor:
    """Return (1, C, h, w) features as (C, h*w) fp32 divided by sqrt(C x the whole picture's `pixels`)."""
    channels = features.shape[1]
    return features.float().reshape(channels, -1) / math.sqrt(channels * pixels)


def scale_objective(
    params: TransferParams,
    backbone: Backbone,
    precision: str,
    device: torch.device,
    size: tuple[int, int],
    max_pass_pixels: int | None,
) -> Objective:
    """Return the objective for pictures of `size`: tiled where one pass of the network would take over `max_pass_pixels`."""
    if max_pass_pixels is not None and needs_tiles(size, max_pass_pixels):
        if params.style_loss != "gram":
            # The tiles' exact global gradient is that of a Gram matrix summed over tiles; the moments loss's is not written yet.
            raise ValueError(
                f"style_loss {params.style_loss!r} runs in one pass only; this picture needs tiles: use style_loss gram or a smaller size"
            )
        return TiledObjective(params, backbone, precision, device, size, max_pass_pixels)
    return Objective(params, backbone, precision, device)
