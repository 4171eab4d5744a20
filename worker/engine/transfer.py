"""The optimisation loop: one function that runs a transfer, reports checkpoints, and can stop and resume."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision.transforms as T
from PIL import Image

from .backbone import Backbone
from .losses import content_loss, gram, style_loss, tv_loss
from shared.params import TransferParams


class Control(enum.Enum):
    """What a checkpoint callback asks of the loop."""

    CONTINUE = "continue"
    STOP = "stop"


@dataclass
class Checkpoint:
    """The losses at one reporting iteration; `preview()` renders the current picture on demand."""

    iteration: int
    elapsed_s: float
    content: float
    style: float
    tv: float
    total: float
    render: Callable[[], Image.Image] = field(repr=False, compare=False)
    capture: Callable[[], TransferState] = field(repr=False, compare=False)

    def preview(self) -> Image.Image:
        """Return the picture as it stands at this checkpoint."""
        return self.render()

    def state(self) -> TransferState:
        """Return the full state at this checkpoint, from which a later run resumes exactly (call it in the callback)."""
        return self.capture()

    def losses(self) -> dict[str, float]:
        """Return the checkpoint's fields as the history records them."""
        return {
            "iteration": self.iteration,
            "elapsed_s": self.elapsed_s,
            "content": self.content,
            "style": self.style,
            "tv": self.tv,
            "total": self.total,
        }


CheckpointCallback = Callable[[Checkpoint], "Control | None"]


@dataclass
class TransferState:
    """Everything needed to continue a run exactly where it stopped (all tensors on the CPU)."""

    iteration: int
    elapsed_s: float
    image: torch.Tensor
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: torch.Tensor
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return a plain dict that `torch.save` can write and `from_dict` reads back."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TransferState:
        """Rebuild a state written by `to_dict`."""
        return cls(**values)


@dataclass
class TransferResult:
    """The outcome of one call to `transfer`."""

    image: Image.Image
    iteration: int
    canceled: bool
    state: TransferState
    tensor: torch.Tensor = field(repr=False)


def output_size(params: TransferParams, content: Image.Image) -> tuple[int, int]:
    """Return the (height, width) a transfer of `content` produces under `params`."""
    if isinstance(params.size, tuple):
        return params.size
    width, height = content.size
    scale = params.size / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def image_to_tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """Resize a PIL image to (height, width) and return it as a (1, 3, H, W) RGB tensor in [0, 1]."""
    pipeline = T.Compose([T.Resize(size), T.ToTensor()])
    return pipeline(image.convert("RGB")).unsqueeze(0)


def tensor_to_image(rgb: torch.Tensor) -> Image.Image:
    """Turn a (1, 3, H, W) RGB tensor into a PIL image, clamping to [0, 1] and rounding to 8 bits."""
    pixels = rgb[0].detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels)


def _to_cpu(value: Any) -> Any:
    """Copy every tensor in a nested optimiser state to the CPU, so a state saved on a GPU loads anywhere."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item) for item in value]
    return value


def _style_size(params: TransferParams, style: Image.Image, content_size: tuple[int, int]) -> tuple[int, int]:
    if not params.keep_style_aspect:
        return content_size
    width, height = style.size
    scale = (content_size[0] * content_size[1] / (width * height)) ** 0.5
    return max(16, round(height * scale)), max(16, round(width * scale))


class _Objective:
    """The weighted loss of a candidate image against fixed content and style targets."""

    def __init__(self, params: TransferParams, backbone: Backbone, content: torch.Tensor, style: torch.Tensor) -> None:
        self.params = params
        self.backbone = backbone
        with torch.no_grad():
            content_features = backbone(self.network_input(content, from_pixels=True), params.content_layers)
            style_features = backbone(self.network_input(style, from_pixels=True), params.style_layers)
        self.content_targets = [content_features[name] for name in params.content_layers]
        self.style_targets = [gram(style_features[name]) for name in params.style_layers]
        if params.normalize_losses:
            self.content_scales = [1 / target.square().mean().clamp_min(1e-12) for target in self.content_targets]
            self.style_scales = [1 / target.square().mean().clamp_min(1e-12) for target in self.style_targets]

    def network_input(self, image: torch.Tensor, *, from_pixels: bool = False) -> torch.Tensor:
        if from_pixels or self.params.image_space == "pixels":
            return self.backbone.convention.normalize(image)
        return image

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (content, style, tv, total) for `image`, the optimised tensor."""
        p = self.params
        features = self.backbone(self.network_input(image), p.layers)
        contents = [content_loss(features[n], t) for n, t in zip(p.content_layers, self.content_targets)]
        styles = [style_loss(features[n], t) for n, t in zip(p.style_layers, self.style_targets)]
        if p.normalize_losses:
            contents = [loss * scale for loss, scale in zip(contents, self.content_scales)]
            styles = [loss * scale for loss, scale in zip(styles, self.style_scales)]
        content = sum(loss * p.content_weight for loss in contents)
        style = sum(loss * p.style_weight for loss in styles)
        tv = tv_loss(image) * p.tv_weight
        return content, style, tv, p.style_repeats * style + content + tv


def _initial_image(params: TransferParams, content: torch.Tensor, style: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if params.init == "content":
        return content.clone()
    if params.init == "style":
        return T.functional.resize(style, list(content.shape[-2:]), antialias=True).clamp(0, 1)
    return torch.rand(content.shape, generator=generator).to(content.device)


def _make_optimizer(params: TransferParams, image: torch.Tensor) -> torch.optim.Optimizer:
    if params.optimizer == "lbfgs":
        # One function evaluation per iteration, so checkpoints and cancel stay on the same beat as Adam.
        return torch.optim.LBFGS([image], lr=params.learning_rate, max_iter=1, history_size=50)
    return torch.optim.Adam([image], lr=params.learning_rate)


def transfer(
    content: Image.Image,
    style: Image.Image,
    params: TransferParams,
    *,
    backbone: Backbone,
    device: torch.device | str = "cpu",
    on_checkpoint: CheckpointCallback | None = None,
    state: TransferState | None = None,
) -> TransferResult:
    """Optimise a picture with the content of `content` and the style of `style`.

    `backbone` must already be on `device` and include every layer in `params`. Every
    `params.checkpoint_every` iterations (and at the last) `on_checkpoint` gets the losses and may
    return `Control.STOP`; the result then carries a `state` from which a later call resumes exactly.
    """
    device = torch.device(device)
    size = output_size(params, content)
    content_rgb = image_to_tensor(content, size).to(device)
    style_rgb = image_to_tensor(style, _style_size(params, style, size)).to(device)
    objective = _Objective(params, backbone, content_rgb, style_rgb)
    generator = torch.Generator().manual_seed(params.seed)

    if state is not None:
        if state.params != params.to_dict():
            raise ValueError("the saved state belongs to a transfer with other parameters")
        image = state.image.to(device).requires_grad_(True)
        generator.set_state(state.rng)
    else:
        initial = _initial_image(params, content_rgb, style_rgb, generator)
        image = (initial if params.image_space == "pixels" else backbone.convention.normalize(initial)).requires_grad_(True)
    optimizer = _make_optimizer(params, image)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, params.lr_decay_step, params.lr_decay_gamma)
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
    iteration = state.iteration if state is not None else 0
    elapsed_before = state.elapsed_s if state is not None else 0.0
    started = time.perf_counter()

    def capture_state() -> TransferState:
        return TransferState(
            iteration=iteration,
            elapsed_s=elapsed_before + time.perf_counter() - started,
            image=image.detach().cpu().clone(),
            optimizer=_to_cpu(optimizer.state_dict()),
            scheduler=scheduler.state_dict(),
            rng=generator.get_state(),
            params=params.to_dict(),
        )

    def picture() -> torch.Tensor:
        rgb = image if params.image_space == "pixels" else backbone.convention.denormalize(image)
        return rgb.detach()

    canceled = False
    while iteration < params.iterations and not canceled:
        last: list[tuple[torch.Tensor, ...]] = []

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            terms = objective(image)
            terms[-1].backward()
            last.append(terms)
            return terms[-1]

        optimizer.step(closure)
        scheduler.step()
        if params.image_space == "pixels":
            with torch.no_grad():
                image.clamp_(0, 1)
        iteration += 1
        if on_checkpoint is not None and (iteration % params.checkpoint_every == 0 or iteration == params.iterations):
            # One device-to-host copy for all four numbers.
            content_value, style_value, tv_value, total_value = torch.stack(last[0]).detach().tolist()
            snapshot = picture().clone()
            checkpoint = Checkpoint(
                iteration=iteration,
                elapsed_s=elapsed_before + time.perf_counter() - started,
                content=content_value,
                style=style_value,
                tv=tv_value,
                total=total_value,
                render=lambda snapshot=snapshot: tensor_to_image(snapshot),
                capture=capture_state,
            )
            canceled = on_checkpoint(checkpoint) is Control.STOP

    final_state = capture_state()
    rgb = picture()
    return TransferResult(image=tensor_to_image(rgb), iteration=iteration, canceled=canceled, state=final_state, tensor=rgb.cpu())
