"""The optimisation loop: runs one transfer, or several jobs as one batch, reporting checkpoints, able to stop and resume."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import itertools
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torchvision.transforms as T
from PIL import Image

from styleq.shared.domain.params import MIN_SCALE_SIDE, OUTPUT_PARAMS, TransferParams, complete_saved_params

from . import graphs
from .backbone import Backbone
from .colors import color_statistics, keep_content_colors, match_color_statistics
from .objective import Objective, StyleTargets, TargetCache, image_digest, picture_size
from .precision import resolve_precision
from .tiles import TiledObjective, scale_objective


class Control(enum.Enum):
    """What a checkpoint callback asks of the loop."""

    CONTINUE = "continue"
    STOP = "stop"


@dataclass
class Progress:
    """The losses at one reporting iteration; `preview()` renders the current picture on demand."""

    iteration: int
    elapsed_s: float
    content: float
    style: float
    tv: float
    total: float
    render: Callable[[], Image.Image] = field(repr=False, compare=False)
    capture: Callable[[], TransferState] = field(repr=False, compare=False)
    # The fraction of the output size the picture had at this checkpoint (coarse-to-fine; 1 otherwise).
    scale: float = 1.0

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
            "scale": self.scale,
        }


CheckpointCallback = Callable[[Progress], "Control | None"]
BatchCheckpointCallback = Callable[[int, Progress], "Control | None"]


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
    # Coarse-to-fine: the content distance the first scale ended with, (1,), once it has ended (None before, and
    # in states saved before it was kept); and the finer scales' content weight factor as it stood (`fine_content_hold`).
    content_goal: torch.Tensor | None = None
    content_factor: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a plain dict that `torch.save` can write and `from_dict` reads back."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TransferState:
        """Rebuild a state written by `to_dict`."""
        return cls(**values)

    def belongs_to(self, params: TransferParams) -> bool:
        """Tell whether this state was saved by a transfer of `params`, so that one may resume from it."""
        # States saved before coarse-to-fine, colours, blends, the style scale or the moments loss existed name none of them.
        return complete_saved_params(self.params) == params.to_dict()


@dataclass
class TransferResult:
    """The outcome of one job's transfer."""

    image: Image.Image
    iteration: int
    canceled: bool
    state: TransferState
    tensor: torch.Tensor = field(repr=False)


@dataclass
class TransferJob:
    """One job of a batch: its content picture, its style picture (or several, blended by `params.style_weights`),
    its parameters and, when resuming, its saved state.

    `style_keys` name the style pictures for the target cache (their uploads' hashes, say), one each;
    without them the pixels are hashed.

    Raises:
        ValueError: no style picture, more than `MAX_STYLES`, or not one `params.style_weights` each.
    """

    content: Image.Image
    styles: Sequence[Image.Image]
    params: TransferParams
    state: TransferState | None = None
    style_keys: Sequence[Hashable] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.styles, Image.Image):
            self.styles = [self.styles]  # one style picture, given alone
        self.params.check_style_count(len(self.styles))
        if self.style_keys is not None and len(self.style_keys) != len(self.styles):
            raise ValueError(f"give one style key per style picture: {len(self.style_keys)} keys for {len(self.styles)} pictures")

    @property
    def style(self) -> Image.Image:
        """Return the first style picture: the one `init="style"` starts from."""
        return self.styles[0]


def output_size(params: TransferParams, content: Image.Image) -> tuple[int, int]:
    """Return the (height, width) a transfer of `content` produces under `params`."""
    # The arithmetic lives with the parameters, so the API refuses a size the network cannot take without torch.
    return params.output_size(*content.size)


def batch_key(params: TransferParams) -> dict[str, Any]:
    """Return what jobs must share to run as one batch: every parameter but the random seed, the style blend and the result file's format.

    The seed and the blend are a job's own: the seed starts its picture, and the blend weights mix its own style
    targets into one set, so a blend shares a batch with jobs of one style as well as with other blends.
    """
    values = params.to_dict()
    for name in ("seed", "style_weights", *OUTPUT_PARAMS):
        values.pop(name)
    return values


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
    """Return the (height, width) the style picture is seen at beside a content picture of `content_size`.

    Its area is `style_scale` times the content's: with `keep_style_aspect` in the style's own proportions,
    else in the content's shape (the seed stretches it so).
    """
    area = content_size[0] * content_size[1] * params.style_scale
    if not params.keep_style_aspect:
        if params.style_scale == 1:
            return content_size
        grow = params.style_scale**0.5
        height, width = content_size[0] * grow, content_size[1] * grow
    else:
        width, height = style.size
        scale = (area / (width * height)) ** 0.5
        height, width = height * scale, width * scale
    # A style much narrower than the content would otherwise lose its short side below what the network takes.
    smallest = params.minimum_side
    return max(smallest, round(height)), max(smallest, round(width))


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return torch.nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=False)


def _style_picture(
    params: TransferParams, picture: Image.Image, size: tuple[int, int], content: torch.Tensor
) -> tuple[torch.Tensor, Hashable]:
    """Return a style picture at `size` as its targets see it, and what its colours were made from.

    With `colors="histogram"` the style takes the colour statistics of `content` (the content at the same scale),
    so its targets depend on the content too: the second value says so, for the target cache's key. Each
    style of a blend is matched to the content on its own.
    """
    style = image_to_tensor(picture, size).to(content.device)
    if params.colors != "histogram":
        return style, "own colors"
    statistics = color_statistics(content)
    return match_color_statistics(style, statistics), ("histogram", statistics.key())


def scale_sizes(params: TransferParams, size: tuple[int, int]) -> list[tuple[int, int]]:
    """Return the (height, width) of each of `params.scales` for an output of `size`."""
    height, width = size
    return [
        (min(height, max(MIN_SCALE_SIDE, round(height * scale))), min(width, max(MIN_SCALE_SIDE, round(width * scale))))
        for scale in params.resolved_scales()
    ]


def _initial_image(params: TransferParams, content: torch.Tensor, style: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    if params.init == "content":
        return content.clone()
    if params.init == "style":
        assert style is not None  # transfer_batch makes the style picture whenever init is "style"
        return T.functional.resize(style, list(content.shape[-2:]), antialias=True).clamp(0, 1)
    return torch.rand(content.shape, generator=generator).to(content.device)


def _optimizer_step(optimizer: torch.optim.Optimizer, closure: Callable[[], torch.Tensor]) -> None:
    """Step `optimizer` with `closure`, which returns the loss tensor, as torch's own examples' closures do."""
    # torch annotates the closure as returning a float; its optimisers take the loss tensor too (L-BFGS calls float() on it).
    optimizer.step(cast("Callable[[], float]", closure))


def _make_optimizer(params: TransferParams, image: torch.Tensor, lr: torch.Tensor | None) -> torch.optim.Optimizer:
    if lr is not None:
        return graphs.capturable_adam(image, lr)
    if params.optimizer == "lbfgs":
        # One step per iteration, so checkpoints and cancel stay on the same beat as Adam. Without a line
        # search that is one evaluation, which jobs in a batch share; with one, a few, each job's own.
        line_search = None if params.line_search == "none" else params.line_search
        return torch.optim.LBFGS(
            [image], lr=params.learning_rate, max_iter=1, history_size=params.lbfgs_history, line_search_fn=line_search
        )
    return torch.optim.Adam([image], lr=params.learning_rate)


class _Run:
    """One job's side of the loop: its picture, optimiser, schedule, random state and progress."""

    def __init__(
        self,
        job: TransferJob,
        backbone: Backbone,
        content: torch.Tensor,
        style: torch.Tensor | None,
        device: torch.device,
        *,
        graphed: bool = False,
    ) -> None:
        params = job.params
        self.params = params
        self.backbone = backbone
        self.content = job.content
        self.generator = torch.Generator().manual_seed(params.seed)
        if job.state is not None:
            if not job.state.belongs_to(params):
                raise ValueError("the saved state belongs to a transfer with other parameters")
            self.image = job.state.image.to(device).requires_grad_(True)
            self.generator.set_state(job.state.rng)
        else:
            initial = _initial_image(params, content, style, self.generator)
            self.image = (initial if params.image_space == "pixels" else backbone.convention.normalize(initial)).requires_grad_(True)
        # A run whose iterations may be replayed from a CUDA graph reads its learning rate from this device tensor.
        self.lr = torch.tensor(params.learning_rate, device=device) if graphed else None
        self.optimizer = _make_optimizer(params, self.image, self.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, params.lr_decay_step, params.lr_decay_gamma)
        if job.state is not None:
            self.optimizer.load_state_dict(job.state.optimizer)
            self.scheduler.load_state_dict(job.state.scheduler)
            if self.lr is not None:
                graphs.make_capturable(self.optimizer, self.lr)
        state = job.state
        self.content_goal = None if state is None or state.content_goal is None else state.content_goal.to(device)
        # A copy: the objective moves the factor in place, and the saved state must stay as it was saved.
        self.content_factor = (
            torch.ones(1, device=device) if state is None or state.content_factor is None else state.content_factor.to(device, copy=True)
        )
        # Whether the scale now running is the first of several, whose last content distance the finer ones hold.
        self.keeps_goal = False
        self.iteration = job.state.iteration if job.state is not None else 0
        self.elapsed_before = job.state.elapsed_s if job.state is not None else 0.0
        self.started = time.perf_counter()
        self.canceled = False
        self.scale = 1.0
        self.scale_end = params.iterations  # the iteration at which the current scale ends

    @property
    def done(self) -> bool:
        return self.canceled or self.iteration >= self.params.iterations

    def _photo_detail(self, coarse: tuple[int, int], fine: tuple[int, int]) -> torch.Tensor:
        """Return what the photo at `fine` holds beyond its `coarse` copy enlarged, in the picture's own space."""
        device = self.image.device
        sharp, blurred = image_to_tensor(self.content, fine).to(device), _resize(image_to_tensor(self.content, coarse).to(device), fine)
        if self.params.image_space == "network":
            # The normalisation is affine per channel, so the difference of normalised pictures is the detail there.
            sharp, blurred = self.backbone.convention.normalize(sharp), self.backbone.convention.normalize(blurred)
        return sharp - blurred

    @property
    def scale_done(self) -> bool:
        return self.canceled or self.iteration >= self.scale_end

    def keep_goal(self, terms: torch.Tensor) -> None:
        """At the end of the first of several scales, keep the content distance of its last iteration's `terms` (4,)."""
        if self.keeps_goal and not self.canceled and self.iteration == self.scale_end:
            self.content_goal = terms[0:1].clone() / self.params.content_weight

    def held_goal(self) -> torch.Tensor | None:
        """Return the content distance a finer scale holds (`fine_content_hold` times the first scale's), or None: a fixed weight."""
        if self.params.fine_content_hold == 0 or self.content_goal is None:
            return None
        return self.content_goal * self.params.fine_content_hold

    def enter_scale(self, scale: float, size: tuple[int, int], end: int) -> None:
        """Go on at `scale` (`size` pixels) until iteration `end`, enlarging the picture if it is smaller.

        Adam's running moments are enlarged with it (and with `rescale_moments` brought to the finer scale's
        gradients), so its steps go on at the size they had; L-BFGS's history belongs to the old size and starts
        again. The schedule and step count go on (with `fine_lr_factor`, from that multiple of `learning_rate`).
        """
        self.scale, self.scale_end = scale, end
        previous = (int(self.image.shape[-2]), int(self.image.shape[-1]))
        if previous == tuple(size):
            return
        image = _resize(self.image.detach(), size)
        if self.params.photo_detail:
            image = image + self._photo_detail(previous, size)
        if self.params.image_space == "pixels":
            image = image.clamp(0, 1)
        self.image = image.requires_grad_(True)
        state = self.optimizer.state_dict()
        if self.params.optimizer == "adam":
            # With `rescale_moments`, the moments are also brought to the finer scale's gradients, which every
            # loss being a mean over pixels makes smaller by the ratio of the pixel counts.
            ratio = previous[0] * previous[1] / (size[0] * size[1]) if self.params.rescale_moments else 1.0
            powers = {"exp_avg": ratio, "exp_avg_sq": ratio * ratio}
            state["state"] = {
                key: {name: _resize(value, size) * powers[name] if name in powers else value for name, value in moments.items()}
                for key, moments in state["state"].items()
            }
        else:
            state["state"] = {}
        self.optimizer = _make_optimizer(self.params, self.image, self.lr)
        # The saved groups bring the current learning rate; a graphed run's must stay its own device tensor.
        self.optimizer.load_state_dict(state)
        if self.params.fine_lr_factor:
            # The scheduler, restored below, decays from whatever rate the groups hold at its next step boundary.
            for group in self.optimizer.param_groups:
                group["lr"] = self.params.learning_rate * self.params.fine_lr_factor
        if self.lr is not None:
            graphs.make_capturable(self.optimizer, self.lr)
        scheduler_state = self.scheduler.state_dict()
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, self.params.lr_decay_step, self.params.lr_decay_gamma)
        self.scheduler.load_state_dict(scheduler_state)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def capture(self) -> TransferState:
        return TransferState(
            iteration=self.iteration,
            elapsed_s=self.elapsed(),
            image=self.image.detach().cpu().clone(),
            optimizer=graphs.portable_optimizer_state(_to_cpu(self.optimizer.state_dict())),
            scheduler=graphs.portable_scheduler_state(self.scheduler.state_dict()),
            rng=self.generator.get_state(),
            params=self.params.to_dict(),
            content_goal=None if self.content_goal is None else self.content_goal.cpu().clone(),
            content_factor=self.content_factor.cpu().clone(),
        )

    def picture(self) -> torch.Tensor:
        rgb = self.image if self.params.image_space == "pixels" else self.backbone.convention.denormalize(self.image)
        return rgb.detach()

    def shown(self, rgb: torch.Tensor) -> torch.Tensor:
        """Return the picture as the user gets it: with `colors="content"`, the content's colours under its luminance."""
        # Applied to what is shown, never to what is optimised: the losses and the saved state are those of `colors="style"`.
        if self.params.colors != "content":
            return rgb
        return keep_content_colors(rgb, image_to_tensor(self.content, picture_size(rgb)).to(rgb.device))

    def step(self, total: torch.Tensor) -> None:
        """Take one optimiser step and clamp; the gradient of this job's `total` is already in `image.grad`."""
        # L-BFGS asks for a closure; the batch's evaluation already happened, so it returns that value.
        _optimizer_step(self.optimizer, lambda: total)
        self._clamp()

    def search_step(self, objective: Objective, row: int) -> torch.Tensor:
        """Take one L-BFGS step with a line search on this job alone; return its losses before the step, (4,)."""
        first: list[torch.Tensor] = []

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad()
            terms = objective.evaluate(self.image, row)
            terms[-1].sum().backward()
            if not first:
                first.append(torch.stack(terms, dim=1).detach()[0])
            return terms[-1][0]

        with torch.enable_grad():
            _optimizer_step(self.optimizer, closure)
        self._clamp()
        self.advance()
        return first[0]

    def _clamp(self) -> None:
        if self.params.image_space == "pixels":
            with torch.no_grad():
                self.image.clamp_(0, 1)

    def advance(self) -> None:
        """Close an iteration whose step is taken: the schedule moves on and the count goes up."""
        self.scheduler.step()
        if self.lr is not None:
            graphs.follow_learning_rate(self.optimizer, self.lr)
        self.iteration += 1

    def at_checkpoint(self) -> bool:
        return self.iteration % self.params.checkpoint_every == 0 or self.iteration == self.params.iterations

    def checkpoint(self, terms: torch.Tensor) -> Progress:
        # One device-to-host copy for all four numbers.
        content, style, tv, total = terms.tolist()
        snapshot = self.picture().clone()
        return Progress(
            iteration=self.iteration,
            elapsed_s=self.elapsed(),
            content=content,
            style=style,
            tv=tv,
            total=total,
            render=lambda: tensor_to_image(self.shown(snapshot)),
            capture=self.capture,
            scale=self.scale,
        )

    def result(self) -> TransferResult:
        rgb = self.shown(self.picture())
        return TransferResult(
            image=tensor_to_image(rgb), iteration=self.iteration, canceled=self.canceled, state=self.capture(), tensor=rgb.cpu()
        )


def _optimise(
    runs: list[_Run], active: list[int], objective: Objective, on_checkpoint: BatchCheckpointCallback | None, *, graphed: bool
) -> None:
    """Iterate the `active` runs until each is done or canceled, calling back at their checkpoints."""
    search = runs[0].params.line_search == "strong_wolfe"
    captured: graphs.CapturedIteration | None = None
    eager_since_change = 0

    def iterate() -> torch.Tensor:
        for index in active:
            runs[index].optimizer.zero_grad()
        images = [runs[index].image for index in active]
        with torch.enable_grad():
            # One job's picture goes in as it is: a cat of one would copy it, and its gradient back, every iteration.
            terms = objective(images[0] if len(images) == 1 else torch.cat(images))
            terms[-1].sum().backward()
        per_job = torch.stack(terms, dim=1).detach()  # (N, 4): content, style, tv, total
        for position, index in enumerate(active):
            runs[index].step(per_job[position, -1])
        objective.follow(per_job[:, 0])
        return per_job

    while active:
        if search:
            # A line search evaluates each job at points of its own choosing, so each job steps alone.
            per_job = torch.stack([runs[index].search_step(objective, position) for position, index in enumerate(active)])
            objective.follow(per_job[:, 0])
        else:
            left = min(runs[index].scale_end - runs[index].iteration for index in active)
            if graphed and captured is None and eager_since_change >= graphs.WARMUP_ITERATIONS and left >= graphs.MIN_REPLAYS:
                captured = graphs.CapturedIteration(iterate, [runs[index].optimizer for index in active])
            if captured is not None:
                per_job = captured.replay()
            else:
                per_job = iterate()
                eager_since_change += 1
            for index in active:
                runs[index].advance()
        for position, index in enumerate(active):
            run = runs[index]
            # Before the checkpoint, so a state saved at the first scale's end carries its goal.
            run.keep_goal(per_job[position])
            if on_checkpoint is not None and run.at_checkpoint():
                run.canceled = on_checkpoint(index, run.checkpoint(per_job[position])) is Control.STOP
        still = [position for position, index in enumerate(active) if not runs[index].scale_done]
        if len(still) < len(active):
            active[:] = [active[position] for position in still]
            if active:
                objective.keep(still)
            # The graph holds the old batch's tensors: warm up and capture again for the new one.
            captured, eager_since_change = None, 0


def transfer_batch(
    jobs: Sequence[TransferJob],
    *,
    backbone: Backbone,
    device: torch.device | str = "cpu",
    on_checkpoint: BatchCheckpointCallback | None = None,
    target_cache: TargetCache | None = None,
    cuda_graphs: bool = True,
    max_pass_pixels: int | None = None,
) -> list[TransferResult]:
    """Optimise several jobs' pictures as one batch; return each job's result, in order.

    The jobs must share every parameter but the seed (`batch_key`) and their output size. Each has its
    own losses, optimiser, schedule and random state, so its picture is the one it would get alone.
    `on_checkpoint(index, checkpoint)` gets each job's checkpoints; returning `Control.STOP` takes
    that job out of the batch (canceled) while the others go on. On a CUDA device Adam's iterations
    are replayed from a captured CUDA graph unless `cuda_graphs` is false (the arithmetic is the same).
    A scale larger than `max_pass_pixels` (None: no limit) is optimised in tiles, its jobs one at a time (`tiles.py`).

    Raises:
        ValueError: jobs that cannot share a batch, or a saved state of other parameters.
    """
    if not jobs:
        return []
    device = torch.device(device)
    params = jobs[0].params
    for job in jobs[1:]:
        if batch_key(job.params) != batch_key(params):
            raise ValueError("jobs in one batch must share every parameter but the seed")
    size = output_size(params, jobs[0].content)
    if any(output_size(job.params, job.content) != size for job in jobs):
        raise ValueError("jobs in one batch must have the same output size")
    # Scales "auto" depend on the output size alone, which the jobs share: each gets the same schedule.
    jobs = [dataclasses.replace(job, params=job.params.with_schedule(*job.content.size)) for job in jobs]
    params = jobs[0].params

    precision = resolve_precision(params.precision, device)
    graphed = cuda_graphs and graphs.graphs_apply(device, params.optimizer, params.line_search)
    sizes = scale_sizes(params, size)
    ends = list(itertools.accumulate(params.iterations_per_scale()))
    runs = []
    for job in jobs:
        # A fresh run starts at the first scale; a resumed one's picture already has its scale's size.
        first = sizes[0] if job.state is None else picture_size(job.state.image)
        content = image_to_tensor(job.content, first).to(device)
        # A blend starts from its first style picture.
        style = _style_picture(params, job.style, _style_size(params, job.style, first), content)[0] if params.init == "style" else None
        runs.append(_Run(job, backbone, content, style, device, graphed=graphed))
    if device.type == "cuda":
        # fp32 means fp32: cuDNN would otherwise round convolutions to TF32 (10-bit mantissas) on Ampere and later.
        # No cuDNN autotuning: on an H100 it tried fp32 algorithms whose workspaces peaked at 8 GiB for a 256x256
        # job, which would upset the batch sizes the worker derives from measured memory per pixel.
        torch.backends.cudnn.allow_tf32 = precision != "fp32"
    for position, (scale, scale_size, end) in enumerate(zip(params.resolved_scales(), sizes, ends)):
        # Runs resumed at different iterations may be at different scales: each scale takes those still in it.
        active = [index for index, run in enumerate(runs) if not run.done and run.iteration < end]
        if not active:
            continue
        objective = scale_objective(params.at_scale(position), backbone, precision, device, scale_size, max_pass_pixels)
        tiled = isinstance(objective, TiledObjective)
        contents, styles = [], []
        for index in active:
            job = jobs[index]
            runs[index].enter_scale(scale, scale_size, end)
            runs[index].keeps_goal = position == 0 and len(sizes) > 1
            content = image_to_tensor(job.content, scale_size).to(device)
            contents.append(content)
            styles.append(_style_targets(job, objective, scale_size, content, target_cache))
        objective.set_targets(contents, styles)
        goals = [runs[index].held_goal() for index in active]
        if position > 0 and all(goal is not None for goal in goals):
            objective.hold([runs[index].content_factor for index in active], cast("list[torch.Tensor]", goals))
        # CUDA graphs are captured and replayed on a stream of their own, never the default one.
        stream = torch.cuda.Stream(device) if graphed and not tiled else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            _optimise(runs, active, objective, on_checkpoint, graphed=graphed and not tiled)
        if stream is not None:
            torch.cuda.current_stream(device).wait_stream(stream)
    return [run.result() for run in runs]


def _style_targets(
    job: TransferJob,
    objective: Objective,
    size: tuple[int, int],
    content: torch.Tensor,
    cache: TargetCache | None,
) -> StyleTargets:
    """Return the job's style targets at `size`: its one style's, or its styles' blended by their weights.

    Each style picture's own targets come from `cache` when it has them, so a style used in many blends costs one forward pass.
    """
    params = job.params
    each = []
    for index, picture in enumerate(job.styles):
        style, colors = _style_picture(params, picture, _style_size(params, picture, size), content)
        key = job.style_keys[index] if job.style_keys is not None else (image_digest(picture) if cache is not None else None)
        each.append(objective.style_targets(style, cache=cache, key=None if key is None else (key, colors)))
    return StyleTargets.blend(each, params.style_shares(len(each)))


def transfer(
    content: Image.Image,
    style: Image.Image | Sequence[Image.Image],
    params: TransferParams,
    *,
    backbone: Backbone,
    device: torch.device | str = "cpu",
    on_checkpoint: CheckpointCallback | None = None,
    state: TransferState | None = None,
    target_cache: TargetCache | None = None,
    cuda_graphs: bool = True,
    max_pass_pixels: int | None = None,
) -> TransferResult:
    """Optimise a picture with the content of `content` and the style of `style`: one picture, or several blended by `params.style_weights`.

    `backbone` must already be on `device` and include every layer in `params`. Every
    `params.checkpoint_every` iterations (and at the last) `on_checkpoint` gets the losses and may
    return `Control.STOP`; the result then carries a `state` from which a later call resumes exactly.
    A scale of more than `max_pass_pixels` pixels is optimised in tiles (`tiles.py`), to the same gradient.
    """
    callback = None if on_checkpoint is None else (lambda _index, checkpoint: on_checkpoint(checkpoint))
    job = TransferJob(content, [style] if isinstance(style, Image.Image) else style, params, state)
    return transfer_batch(
        [job],
        backbone=backbone,
        device=device,
        on_checkpoint=callback,
        target_cache=target_cache,
        cuda_graphs=cuda_graphs,
        max_pass_pixels=max_pass_pixels,
    )[0]
