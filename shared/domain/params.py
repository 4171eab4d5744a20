"""Transfer parameters: presets, validated ranges, and conversion from plain JSON-like mappings.

Pure standard library, so the API validates a job with exactly the ranges the engine runs by, without importing torch.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Inclusive numeric ranges of every numeric parameter; the API and CLI validate against the same table.
RANGES: dict[str, tuple[float, float]] = {
    "size": (16, 4096),
    "iterations": (1, 20000),
    "learning_rate": (1e-6, 1e3),
    "lr_decay_step": (1, 20000),
    "lr_decay_gamma": (0.01, 1.0),
    "content_weight": (0.0, 1e12),
    "style_weight": (0.0, 1e12),
    "tv_weight": (0.0, 1e12),
    "style_repeats": (1, 100),
    "seed": (0, 2**63 - 1),
    "checkpoint_every": (1, 20000),
    "lbfgs_history": (1, 1000),
    # The style picture's area as a multiple of the content's at each scale: below 1 its strokes and textures
    # come out larger in the result, above 1 smaller (the network sees the style picture shrunk or enlarged).
    "style_scale": (0.25, 4.0),
    # Coarse-to-fine: the content weight at every scale after the first, as a multiple of content_weight.
    "fine_content_factor": (0.0, 100.0),
    # JPEG and WebP quality (Pillow's scale); a PNG result is lossless and ignores it.
    "quality": (1, 100),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adam", "lbfgs"),
    "init": ("content", "style", "noise"),
    "image_space": ("network", "pixels"),
    # "auto": bf16 where the device computes it natively (CUDA with bf16, CPUs with AMX or AVX-512 BF16), else fp32.
    "precision": ("fp32", "bf16", "auto"),
    # L-BFGS only: "strong_wolfe" searches along each step for a sufficient decrease (a few evaluations per
    # step, each job of a batch on its own); "none" takes the step as it comes (one evaluation, shared by a batch).
    "line_search": ("none", "strong_wolfe"),
    # "style": the result takes the style's colours (the seed). "content": the result keeps the content's colours
    # (its luminance recombined with the content's chroma). "histogram": the style picture is given the content's
    # colour statistics before its targets are computed, so its textures arrive in the content's palette.
    "colors": ("style", "content", "histogram"),
    # "gram": the squared difference of Gram matrices (the seed). "moments": the squared 2-Wasserstein distance
    # between Gaussians of the features' mean and covariance (worker/engine/losses.py moment_losses).
    "style_loss": ("gram", "moments"),
    # The result file's format (shared/adapters/outputs.py); the picture itself is the same in each.
    "format": ("png", "jpeg", "webp"),
}
# Parameters that decide only how the result is written, not the picture: jobs differing in them share a batch.
OUTPUT_PARAMS = ("format", "quality")
# The values of parameters added after some states were saved, as those states ran: a saved state that names
# none of them resumes as a job with these values (states saved before coarse-to-fine ran in one pass, ...).
SAVED_STATE_DEFAULTS: dict[str, Any] = {
    "scales": [1.0],
    "scale_iterations": None,
    "colors": "style",
    "style_weights": None,
    "style_scale": 1.0,
    "style_loss": "gram",
    "format": "png",
    "quality": 92,
    "photo_detail": False,
    "fine_content_factor": 1.0,
}
# The weights registry's names and files (worker/engine/weights.py REGISTRY), so the API can refuse anything
# else (a client must never name a file path), and weights an operator has not pulled, without importing the engine.
WEIGHTS_FILES: dict[str, str] = {
    "vgg16-caffe": "vgg16-caffe-5486cb09.safetensors",
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
}
WEIGHTS_NAMES: tuple[str, ...] = tuple(WEIGHTS_FILES)
# The most style pictures one job blends: each costs a forward pass for its targets, and past a few the mix is mud.
MAX_STYLES = 4
# The largest blend weight: only the weights' ratios matter, and a bound keeps their sum a finite float.
MAX_STYLE_WEIGHT = 1e6


def installed_weights(model_dir: Path) -> tuple[str, ...]:
    """Return the registry weights whose file is in `model_dir`: the only ones a worker runs (it never downloads)."""
    return tuple(name for name, filename in WEIGHTS_FILES.items() if (Path(model_dir) / filename).is_file())


MAX_SCALES = 8
# Below about a tenth of a normal output the network sees too few pixels for its deepest layers.
MIN_SCALE = 0.05
# Without `scale_iterations`, each scale of a coarse-to-fine job gets about the same share of its time: iterations
# in inverse proportion to the scale's pixels, so a scale half the size gets four times as many (most of the picture
# settles there, cheaply); but none fewer than MIN_SCALE_SHARE of them, so the full size still gets its details.
MIN_SCALE_SHARE = 0.05
# The automatic schedule (scales="auto"): one pass for an output up to ONE_PASS_LONG_SIDE pixels on its long side;
# above, a first scale about COARSE_LONG_SIDE pixels long, then scales growing by at most MAX_SCALE_STEP each.
# The first scale is a whole one-pass picture: it settles the look, as a 450 px job does. Started at 320 px, the
# schedule lost what was a few pixels there (a lodge, arcades) and painted the style's objects at the size of
# buildings (issue 23; docs/QUALITY.md); the finer scales only sharpen (see `photo_detail`).
ONE_PASS_LONG_SIDE = 512
COARSE_LONG_SIDE = 512
MAX_SCALE_STEP = 2.0
# With scales "auto", a job's `iterations` are a one-pass job's budget: the first scale gets FIRST_SCALE_SHARE of
# them and each finer scale FINER_SCALE_SHARE (300: 180 at 512 px, then 40 at 1024 and 40 at 2048), and the job's
# iterations are their sum. An iteration at twice the size costs four, so the finer scales get few: a 1024 px job
# costs about 85 full-size iterations (253 s on 2 AVX-512 BF16 cores, where the schedule before took 241 s). With
# 120 at the first scale The Scream's palette was not settled (style 1.5x the 450 px picture's; docs/QUALITY.md); with 180,
# 1.17x.
FIRST_SCALE_SHARE = 0.6
FINER_SCALE_SHARE = 2 / 15
# The fewest pixels the short side of a coarse scale may have (the engine enlarges smaller ones to it): VGG's fifth
# block still sees a few pixels there.
MIN_SCALE_SIDE = 32
AUTO = "auto"
_LAYER_NAME = re.compile(r"^(conv|relu)[1-5]_[1-4]$|^pool[1-5]$")


@dataclass(frozen=True)
class TransferParams:
    """Everything that decides the picture a transfer makes, apart from the two input images and the weights."""

    weights: str
    # (height, width) exactly, like the seed's (300, 450), or an int: the long side, aspect kept.
    size: tuple[int, int] | int
    iterations: int
    optimizer: str
    learning_rate: float
    lr_decay_step: int
    lr_decay_gamma: float
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    content_weight: float
    style_weight: float
    tv_weight: float
    # How many times the style term enters the total: the seed's `10 * styles_l` repeats a list.
    style_repeats: int
    init: str
    seed: int
    # "network": optimise the normalised network input, unclamped (the seed). "pixels": optimise RGB
    # in [0, 1] and clamp after every step, so the picture never leaves the valid range.
    image_space: str
    # Divide each layer's loss by its target's mean square, so one set of weights suits every backbone
    # (Caffe activations are ~250x torchvision's) and every layer counts alike.
    normalize_losses: bool
    # Resize the style image to the content's area keeping its own aspect ratio, instead of stretching
    # it to the content's exact shape as the seed does.
    keep_style_aspect: bool
    checkpoint_every: int = 10
    # The arithmetic of the network: Gram matrices, losses, the picture and the optimiser stay fp32 in every case.
    precision: str = "fp32"
    # How many past steps L-BFGS keeps to shape its next one.
    lbfgs_history: int = 100
    line_search: str = "none"
    # Coarse-to-fine: the picture is optimised at each of these fractions of the output size in turn (ascending,
    # the last 1), each scale starting from the previous one's result enlarged. (1.0,) is one pass at full size;
    # "auto" chooses them from the output size (`auto_scales`), see `with_schedule`.
    scales: tuple[float, ...] | str = (1.0,)
    # Iterations at each scale, adding up to `iterations`; None splits them by `split_iterations`.
    scale_iterations: tuple[int, ...] | None = None
    colors: str = "style"
    # Several style pictures: each one's share of the blended style targets, in the pictures' order, any positive
    # numbers (normalised to sum 1 when mixed). None gives every picture the same share (and one picture all of it).
    # Not to be confused with `style_weight`, the weight of the style loss against the content loss.
    style_weights: tuple[float, ...] | None = None
    # The style picture is seen at this multiple of the content's area (at every scale): RANGES["style_scale"].
    style_scale: float = 1.0
    style_loss: str = "gram"
    format: str = "png"
    quality: int = 92
    # Coarse-to-fine: on entering a finer scale, add to the enlarged picture the photo's detail that the coarser
    # scale could not hold (the photo at the new size minus its own enlarged coarser copy), so the finer scale
    # starts from the photo's edges rather than a blur, and its few iterations go to styling them.
    photo_detail: bool = False
    # Coarse-to-fine: the content weight at every scale after the first is this many times `content_weight`. The
    # first scale settles the look; at the finer ones the content layer sees the photo's smaller shapes, which the
    # style would otherwise paint over in the few iterations they get (bench/quality.py, docs/QUALITY.md).
    fine_content_factor: float = 1.0
    preset: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        for name, (low, high) in RANGES.items():
            values = self.size if name == "size" and isinstance(self.size, tuple) else (getattr(self, name),)
            for value in values:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                    raise ValueError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
        for name in ("iterations", "lr_decay_step", "style_repeats", "seed", "checkpoint_every", "lbfgs_history", "quality"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if isinstance(self.size, tuple) and (len(self.size) != 2 or not all(isinstance(v, int) for v in self.size)):
            raise ValueError(f"size must be [height, width] in pixels or one integer (the long side), got {self.size!r}")
        if not isinstance(self.size, (tuple, int)):
            raise ValueError(f"size must be [height, width] in pixels or one integer (the long side), got {self.size!r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("content_layers", "style_layers"):
            layers = getattr(self, name)
            if (
                not isinstance(layers, tuple)
                or not layers
                or any(not isinstance(layer, str) or not _LAYER_NAME.match(layer) for layer in layers)
            ):
                raise ValueError(
                    f"{name} must be a non-empty list of layer names like relu4_2, got {list(layers) if isinstance(layers, tuple) else layers!r}"
                )
        for name in ("normalize_losses", "keep_style_aspect", "photo_detail"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        self._check_scales()
        self._check_style_weights()
        if self.line_search != "none" and self.optimizer != "lbfgs":
            raise ValueError(f"line_search {self.line_search!r} needs optimizer lbfgs, got {self.optimizer!r}")
        if not isinstance(self.weights, str) or not self.weights:
            raise ValueError("weights must name registry weights or a weights file")

    def _check_scales(self) -> None:
        scales, counts = self.scales, self.scale_iterations
        if scales == AUTO:
            if counts is not None:
                raise ValueError('scale_iterations needs explicit scales; with scales "auto" the iterations are split automatically')
            return
        if (
            not isinstance(scales, tuple)
            or not 1 <= len(scales) <= MAX_SCALES
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in scales)
        ):
            raise ValueError(f'scales must be "auto" or a list of 1 to {MAX_SCALES} fractions of the output size, got {scales!r}')
        if scales[-1] != 1 or any(not MIN_SCALE <= v <= 1 for v in scales) or any(a >= b for a, b in itertools.pairwise(scales)):
            raise ValueError(f"scales must rise strictly from at least {MIN_SCALE:g} and end at 1, got {list(scales)!r}")
        if counts is None:
            if self.iterations < len(scales):
                raise ValueError(f"iterations ({self.iterations}) must be at least the number of scales ({len(scales)})")
            return
        if (
            not isinstance(counts, tuple)
            or len(counts) != len(scales)
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in counts)
        ):
            raise ValueError(f"scale_iterations must be a list of {len(scales)} positive integers, one per scale, got {counts!r}")
        if sum(counts) != self.iterations:
            raise ValueError(f"scale_iterations must add up to iterations ({self.iterations}), got {list(counts)!r} (sum {sum(counts)})")

    def _check_style_weights(self) -> None:
        weights = self.style_weights
        if weights is None:
            return
        if (
            not isinstance(weights, tuple)
            or not 1 <= len(weights) <= MAX_STYLES
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= MAX_STYLE_WEIGHT for v in weights)
        ):
            shown = list(weights) if isinstance(weights, tuple) else weights
            raise ValueError(
                f"style_weights must be a list of 1 to {MAX_STYLES} positive numbers up to {MAX_STYLE_WEIGHT:g}, one per style picture, got {shown!r}"
            )

    def check_style_count(self, count: int) -> None:
        """Refuse `count` style pictures: none, more than MAX_STYLES, or a number `style_weights` does not give one weight each.

        Raises:
            ValueError: naming the count and what was expected.
        """
        if not 1 <= count <= MAX_STYLES:
            raise ValueError(f"a job takes 1 to {MAX_STYLES} style pictures, got {count}")
        if self.style_weights is not None and len(self.style_weights) != count:
            raise ValueError(
                f"style_weights gives {len(self.style_weights)} weight(s) for {count} style picture(s); give one per style, in their order"
            )

    def style_shares(self, count: int) -> tuple[float, ...]:
        """Return each of `count` style pictures' share of the blend, summing to 1: `style_weights` normalised, or equal shares."""
        self.check_style_count(count)
        weights = self.style_weights or (1.0,) * count
        total = math.fsum(weights)
        return tuple(weight / total for weight in weights)

    def resolved_scales(self) -> tuple[float, ...]:
        """Return the scales, each a fraction of the output size.

        Raises:
            ValueError: scales still "auto" (see `with_schedule`).
        """
        if isinstance(self.scales, str):  # "auto", the one string scales may be
            raise ValueError('scales "auto" must be resolved for an output size first (with_schedule)')
        return self.scales

    def iterations_per_scale(self) -> tuple[int, ...]:
        """Return how many iterations each scale gets: `scale_iterations`, or `iterations` split by `split_iterations`.

        Raises:
            ValueError: scales still "auto" (see `with_schedule`).
        """
        scales = self.resolved_scales()
        return self.scale_iterations if self.scale_iterations is not None else split_iterations(self.iterations, scales)

    def at_scale(self, position: int) -> TransferParams:
        """Return the parameters the losses of the scale at `position` (0: the first) use: `fine_content_factor` after the first."""
        if position == 0 or self.fine_content_factor == 1:
            return self
        return dataclasses.replace(self, content_weight=self.content_weight * self.fine_content_factor)

    def with_schedule(self, content_width: int, content_height: int) -> TransferParams:
        """Return these parameters with scales "auto" replaced by the schedule for a content picture this size.

        The scales and the iterations of each are written out (`auto_scales`, `auto_scale_iterations`), with
        `iterations` their sum, so a job's stored parameters, its saved states and its page show the schedule it
        runs; explicit scales stay as given.
        """
        if self.scales != AUTO:
            return self
        height, width = self.output_size(content_width, content_height)
        scales = auto_scales(height, width, self.minimum_side, self.iterations)
        if len(scales) == 1:
            return dataclasses.replace(self, scales=scales, scale_iterations=None)
        counts = auto_scale_iterations(self.iterations, len(scales))
        return dataclasses.replace(self, scales=scales, scale_iterations=counts, iterations=sum(counts))

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as a JSON-ready dict."""
        values = dataclasses.asdict(self)
        values["size"] = list(self.size) if isinstance(self.size, tuple) else self.size
        values["content_layers"] = list(self.content_layers)
        values["style_layers"] = list(self.style_layers)
        values["scales"] = self.scales if self.scales == AUTO else list(self.scales)
        values["scale_iterations"] = None if self.scale_iterations is None else list(self.scale_iterations)
        values["style_weights"] = None if self.style_weights is None else list(self.style_weights)
        return values

    @property
    def layers(self) -> tuple[str, ...]:
        """Return every layer the losses read, content first, without repeats."""
        return tuple(dict.fromkeys(self.content_layers + self.style_layers))

    @property
    def deepest_layer(self) -> str:
        """Return the layer behind the most pooling steps: the one that needs the largest picture."""
        return max(self.layers, key=_poolings_before)

    @property
    def minimum_side(self) -> int:
        """Return the fewest pixels the output may have on either side.

        VGG halves the picture at every pool (2x2, stride 2, rounding down), so a layer behind n of them
        needs 2**n pixels a side to see one (relu5_1: 16, pool5: 32); below that the network fails. And no
        side may be under what an explicit [height, width] allows (RANGES["size"]): a 1-pixel side would
        leave total variation nothing to measure.
        """
        return max(int(RANGES["size"][0]), 2 ** _poolings_before(self.deepest_layer))

    def output_size(self, content_width: int, content_height: int) -> tuple[int, int]:
        """Return the (height, width) of the picture a transfer of a content picture this size makes."""
        if isinstance(self.size, tuple):
            return self.size
        return long_side_output(self.size, content_width, content_height)

    def check_output_size(self, content_width: int, content_height: int) -> None:
        """Refuse an output the network cannot take for a content picture this size, naming the smallest size that works.

        Raises:
            ValueError: a side of the output under `minimum_side`.
        """
        height, width = self.output_size(content_width, content_height)
        minimum = self.minimum_side
        if min(height, width) >= minimum:
            return
        needs = f"the network needs at least {minimum} pixels on each side (for layer {self.deepest_layer})"
        if isinstance(self.size, tuple):
            raise ValueError(f"size [{height}, {width}] is too small: {needs}")
        made = f"size {self.size} turns the {content_width}x{content_height} (width x height) content into {width}x{height}"
        smallest = smallest_long_side(minimum, content_width, content_height)
        largest = int(RANGES["size"][1])
        if smallest > largest:
            raise ValueError(
                f"{made}, but {needs}; no long side up to {largest} gives that for a content this narrow: "
                f"give size as [height, width] instead, e.g. [{max(minimum, height)}, {max(minimum, width)}]"
            )
        raise ValueError(f"{made}, but {needs}: the smallest size that works for this content is {smallest}")


PRESETS: dict[str, dict[str, Any]] = {
    # The notebook, number for number (see ../shared/seed/NOTES.md).
    "seed": dict(
        weights="vgg19",
        size=(300, 450),
        iterations=500,
        optimizer="adam",
        learning_rate=0.3,
        lr_decay_step=50,
        lr_decay_gamma=0.8,
        content_layers=("relu4_4",),
        style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "conv5_1"),
        content_weight=1.0,
        style_weight=1e3,
        tv_weight=10.0,
        style_repeats=10,
        init="content",
        seed=0,
        image_space="network",
        normalize_losses=False,
        keep_style_aspect=False,
        precision="fp32",
    ),
    # The service's default: good pictures on any backbone with no tuning.
    "styleq": dict(
        weights="vgg16-caffe",
        size=(300, 450),
        iterations=300,
        optimizer="adam",
        learning_rate=0.02,
        lr_decay_step=100,
        lr_decay_gamma=0.7,
        content_layers=("relu4_2",),
        style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
        content_weight=1.0,
        style_weight=10.0,
        tv_weight=1.0,
        style_repeats=1,
        init="content",
        seed=0,
        image_space="pixels",
        normalize_losses=True,
        keep_style_aspect=True,
        precision="auto",
        scales=AUTO,
        photo_detail=True,
        fine_content_factor=3.0,
    ),
}
DEFAULT_PRESET = "styleq"


def complete_saved_params(saved: Mapping[str, Any]) -> dict[str, Any]:
    """Return a saved state's parameters with those added since it was saved at the values it ran with."""
    return {**SAVED_STATE_DEFAULTS, **saved}


def parse_size(text: str) -> tuple[int, int] | int:
    """Parse a `--size`: HEIGHTxWIDTH like 300x450, or one number for the long side.

    Raises:
        ValueError: anything else (`300x` included).
    """
    if match := re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text):
        return int(match[1]), int(match[2])
    if text.strip().isdigit():
        return int(text)
    raise ValueError(f"expected HEIGHTxWIDTH like 300x450, or one number for the long side; got {text!r}")


def parse_style_weights(text: str) -> tuple[float, ...]:
    """Parse style blend weights written as comma-separated numbers, like "0.7,0.3".

    Raises:
        ValueError: anything but positive, finite numbers (their count is checked against the pictures elsewhere).
    """
    parts = [part.strip() for part in text.split(",")]
    try:
        weights = tuple(float(part) for part in parts)
    except ValueError:
        raise ValueError(f"style weights must be comma-separated numbers like 0.7,0.3, got {text!r}") from None
    # NaN fails every comparison, so it is refused with the rest.
    if not 1 <= len(weights) <= MAX_STYLES or any(not 0 < weight <= MAX_STYLE_WEIGHT for weight in weights):
        raise ValueError(
            f"style weights must be 1 to {MAX_STYLES} positive numbers up to {MAX_STYLE_WEIGHT:g}, like 0.7,0.3, one per style picture; got {text!r}"
        )
    return weights


def style_roles(count: int) -> list[str]:
    """Return how messages name each of `count` style pictures: "style" for one alone, "style 1", "style 2"... in a blend."""
    return ["style"] if count == 1 else [f"style {number}" for number in range(1, count + 1)]


def long_side_output(long_side: int, content_width: int, content_height: int) -> tuple[int, int]:
    """Return the (height, width) of an output `long_side` pixels on its long side, with the content's aspect."""
    scale = long_side / max(content_width, content_height)
    return max(1, round(content_height * scale)), max(1, round(content_width * scale))


def smallest_long_side(minimum_side: int, content_width: int, content_height: int) -> int:
    """Return the smallest long side whose output keeps at least `minimum_side` pixels on the content's short side."""
    long, short = max(content_width, content_height), min(content_width, content_height)
    # The short side is round(long_side * short / long): start just below where that reaches the minimum
    # and step up, so the answer is the one `long_side_output` (with its rounding) agrees with.
    long_side = max(minimum_side, int((minimum_side - 0.5) * long / short) - 1)
    while min(long_side_output(long_side, content_width, content_height)) < minimum_side:
        long_side += 1
    return long_side


def _poolings_before(layer: str) -> int:
    """Return how many pooling steps lie between the input and `layer` (relu4_2: 3, pool4: 4)."""
    block = int(layer[4])  # conv4_2, relu4_2 and pool4 are all in block 4
    return block if layer.startswith("pool") else block - 1


def auto_scales(
    height: int, width: int, minimum_side: int, iterations: int | None = None, first_long_side: int = COARSE_LONG_SIDE
) -> tuple[float, ...]:
    """Return the coarse-to-fine scales for an output of (height, width): one pass when it is small.

    The first scale is about `first_long_side` pixels on the long side (more where the short side would fall
    under what the network's deepest layer needs, `minimum_side`, or under MIN_SCALE_SIDE); each next scale is at
    most MAX_SCALE_STEP times larger, in equal steps, up to 1. With fewer `iterations` than scales, the
    coarsest go, so every scale gets one.
    """
    long, short = max(height, width), min(height, width)
    if long <= ONE_PASS_LONG_SIDE:
        return (1.0,)
    first = min(1.0, max(first_long_side / long, max(minimum_side, MIN_SCALE_SIDE) / short, MIN_SCALE))
    steps = math.ceil(math.log(1 / first) / math.log(MAX_SCALE_STEP) - 1e-9)
    # Equal ratios from the first scale to 1: the steps are as even as the fewest of them allows.
    ratio = (1 / first) ** (1 / steps) if steps else 1.0
    scales = (*(round(ratio ** -(steps - index), 4) for index in range(steps)), 1.0)
    return scales[-min(MAX_SCALES, iterations or MAX_SCALES) :]


def auto_scale_iterations(iterations: int, count: int) -> tuple[int, ...]:
    """Return the iterations of each of `count` automatic scales for a job of `iterations`: FIRST_SCALE_SHARE of
    them at the first, FINER_SCALE_SHARE at each finer one, at least one each."""
    first = max(1, round(iterations * FIRST_SCALE_SHARE))
    finer = max(1, round(iterations * FINER_SCALE_SHARE))
    return (first, *(finer for _ in range(count - 1)))


def split_iterations(iterations: int, scales: tuple[float, ...]) -> tuple[int, ...]:
    """Split `iterations` between `scales` in inverse proportion to their pixels, each getting at least `MIN_SCALE_SHARE` of them.

    The scales whose proportional share would fall under the floor get the floor; the rest is shared out again
    among the others; the counts are then rounded by largest remainder, so they add up to `iterations`.
    """
    if len(scales) == 1:
        return (iterations,)
    floor = max(1, round(iterations * MIN_SCALE_SHARE))
    weights = [1 / scale**2 for scale in scales]
    floored: set[int] = set()
    while True:
        free = iterations - floor * len(floored)
        total = sum(weight for index, weight in enumerate(weights) if index not in floored)
        shares = [float(floor) if index in floored else free * weight / total for index, weight in enumerate(weights)]
        under = {index for index, share in enumerate(shares) if index not in floored and share < floor}
        if not under:
            break
        floored |= under
    counts = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(scales)), key=lambda index: (counts[index] - shares[index], index))
    for index in by_remainder[: iterations - sum(counts)]:
        counts[index] += 1
    return tuple(counts)


def resolve_params(values: Mapping[str, Any] | None = None, **overrides: Any) -> TransferParams:
    """Build parameters from a preset (`values["preset"]`, default "styleq") and explicit overrides.

    Raises:
        ValueError: an unknown preset or parameter, or a value out of its range.
    """
    merged = dict(values or {})
    merged.update({key: value for key, value in overrides.items() if value is not None})
    preset = merged.pop("preset", None) or DEFAULT_PRESET
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(TransferParams)} - {"preset"}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
    resolved = {**PRESETS[preset], **merged}
    size = resolved["size"]
    if isinstance(size, list):
        resolved["size"] = tuple(size)
    for name in ("scales", "scale_iterations", "style_weights"):
        if isinstance(resolved.get(name), list):
            resolved[name] = tuple(resolved[name])
    if isinstance(resolved.get("scales"), str) and resolved["scales"].strip().lower() == AUTO:
        resolved["scales"] = AUTO
    for name in ("content_layers", "style_layers"):
        if isinstance(resolved[name], (list, str)):
            layers = resolved[name]
            resolved[name] = tuple(layers.split(",") if isinstance(layers, str) else layers)
    return TransferParams(**resolved, preset=preset)
