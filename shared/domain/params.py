"""Transfer parameters: presets, validated ranges, and conversion from plain JSON-like mappings.

Pure standard library, so the API validates a job with exactly the ranges the engine runs by, without importing torch.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    "fine_content_hold": 0.0,
    "fine_lr_factor": 0.0,
    "rescale_moments": False,
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
# above, a first scale COARSE_LONG_SIDE pixels long, then scales growing by at most MAX_SCALE_STEP each.
# The first scale is the service's own one-pass picture (450 px, the default size): it settles the look, and the
# larger picture is compared with it. Started at 320 px, the schedule lost what was a few pixels there (a lodge,
# arcades) and painted the style's objects at the size of buildings (issue 23; docs/QUALITY.md); the finer scales
# only sharpen (see `photo_detail`). MAX_SCALE_STEP lets a 1024 px picture come from 450 px in one step.
ONE_PASS_LONG_SIDE = 512
COARSE_LONG_SIDE = 450
MAX_SCALE_STEP = 2.3
# With scales "auto", a job's `iterations` are a one-pass job's budget: the first scale gets FIRST_SCALE_SHARE of
# them and each finer scale FINER_SCALE_SHARE (300: 240 at 450 px, then 60 at 1024, or 60 at 960 and 60 at 2048),
# and the job's iterations are their sum. The first scale's share is what settles a slow palette: with 180
# iterations at 512 px The Scream's style was 1.15x its 450 px picture's, with 240 at 450 px, in the same time,
# 0.93x (docs/QUALITY.md). A finer scale paints the new size's fine texture, and its style distance falls with
# every iteration it gets: 40 at 1024 px left the autumn oak's leaves on Rainier at 1.43x its 450 px picture's
# (0.0175), 60 at 0.92x (0.0112), and Tübingen x The Scream 0.0098 -> 0.0047, each with more of the photo kept.
# An iteration at 1024 px costs about six at 450 px, so a 1024 px job costs about 100 full-size iterations
# (141-170 s on 2 AMX cores, all eight pairs of the quality bench; docs/QUALITY.md).
FIRST_SCALE_SHARE = 0.8
FINER_SCALE_SHARE = 0.2
# The fewest pixels the short side of a coarse scale may have (the engine enlarges smaller ones to it): VGG's fifth
# block still sees a few pixels there.
MIN_SCALE_SIDE = 32
AUTO = "auto"
# What a layer of `content_layers` and `style_layers` may be called (the API document gives the same pattern).
LAYER_NAME = re.compile(r"^(conv|relu)[1-5]_[1-4]$|^pool[1-5]$")


@dataclass(frozen=True)
class Spec:
    """One transfer parameter as every surface shows it: the one place it is described, bounded and offered.

    `TransferParams` gives each of its fields one (`param`); from them come the checks of `TransferParams`, the
    API's OpenAPI description of `params`, the command line's options, the new-job form's fields and the job page's
    rows. A parameter added as a field with its spec appears, checked, in all of them.
    """

    # A person's words for it: the job page's row and the form's label.
    label: str
    # What it does, in a sentence or two: the API document and the command line's --help.
    description: str
    # Inclusive bounds of a number (of each number, for a list of them).
    low: float | None = None
    high: float | None = None
    # The values a string may take, and a person's words for each (the form's options, the job page's values).
    choices: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    # The command-line flag, when not --<name with dashes>; "" when the command line sets it another way.
    option: str | None = None
    # Where the new-job form offers it: "main" (always shown) or "more" (under More settings); None: not on the form.
    form: str | None = None
    # The form's line under the field.
    hint: str = ""
    # The unit the job page writes a count in ("iterations").
    unit: str = ""

    def bounds(self) -> str:
        """Return the bounds in words: "1 to 100", or "at least 0" where the top is out of a person's reach; "" for none."""
        if self.low is None or self.high is None:
            return ""
        return f"at least {self.low:g}" if self.high >= 1e9 else f"{self.low:g} to {self.high:g}"

    def words_for(self, value: str) -> str:
        """Return a person's words for one of `choices` (the value itself where it has none)."""
        return dict(zip(self.choices, self.words)).get(value, value) if self.words else value


@dataclass(frozen=True)
class Parameter:
    """A field of `TransferParams` with its spec: `kind` is its annotation as written ("int", "tuple[float, ...] | str")."""

    name: str
    kind: str
    spec: Spec

    @property
    def option(self) -> str:
        return self.spec.option if self.spec.option is not None else "--" + self.name.replace("_", "-")


def param(spec: Spec, default: Any = dataclasses.MISSING) -> Any:
    """Declare a field of `TransferParams` with its `spec` (and its default, where the presets may leave it out).

    A field added later needs its value as states saved before it ran with in `SAVED_STATE_DEFAULTS`, where that
    differs from `default`.
    """
    return field(default=default, metadata={"spec": spec})


def parameters(params_class: type | None = None) -> tuple[Parameter, ...]:
    """Return every transfer parameter with its spec, in the order the job page lists them (the preset first).

    `params_class` is `TransferParams` unless given (looked up when called, so a subclass put in its place counts).
    """
    return _parameters_of(params_class or TransferParams)


@functools.cache
def _parameters_of(params_class: type) -> tuple[Parameter, ...]:
    # Read once per class: every TransferParams checks itself by them, and one is made per request and per job.
    found = tuple(
        Parameter(one.name, _written(one.type), one.metadata["spec"]) for one in dataclasses.fields(params_class) if "spec" in one.metadata
    )
    return tuple(sorted(found, key=lambda parameter: parameter.name != "preset"))


def _written(annotation: Any) -> str:
    """Return an annotation as written: a string already where annotations are postponed, `float` for the class float."""
    if isinstance(annotation, str):
        return annotation
    return annotation.__name__ if annotation in (int, float, str, bool) else str(annotation)


@dataclass(frozen=True)
class TransferParams:
    """Everything that decides the picture a transfer makes, apart from the two input images and the weights."""

    weights: str = param(
        Spec(
            "Network weights",
            f"The VGG weights the network runs on: {', '.join(WEIGHTS_NAMES)} (`styleq weights list`); the command line also "
            "takes a .pth or .safetensors file.",
        )
    )
    # (height, width) exactly, like the seed's (300, 450), or an int: the long side, aspect kept.
    size: tuple[int, int] | int = param(
        Spec(
            "Size",
            "The output's [height, width] in pixels (HEIGHTxWIDTH like 300x450 on the command line), or one number: its long "
            "side, the content's aspect kept.",
            low=16,
            high=4096,
        )
    )
    iterations: int = param(
        Spec(
            "Iterations",
            "Optimisation steps; with scales auto, a one-pass job's budget, which the schedule shares out.",
            low=1,
            high=20000,
            form="main",
        )
    )
    optimizer: str = param(Spec("Optimizer", "The optimiser: Adam, or L-BFGS.", choices=("adam", "lbfgs"), words=("Adam", "L-BFGS")))
    learning_rate: float = param(
        Spec("Learning rate", "Adam's step size (L-BFGS's first step).", low=1e-6, high=1e3, option="--lr", form="more")
    )
    lr_decay_step: int = param(
        Spec(
            "Decay every",
            "Iterations between multiplications of the learning rate by lr_decay_gamma.",
            low=1,
            high=20000,
            unit="iterations",
        )
    )
    lr_decay_gamma: float = param(
        Spec("Decay factor", "What the learning rate is multiplied by every lr_decay_step iterations.", low=0.01, high=1.0)
    )
    content_layers: tuple[str, ...] = param(
        Spec(
            "Content layers",
            "The network layers whose features the picture keeps from the content, e.g. relu4_2 (comma-separated on the command line).",
        )
    )
    style_layers: tuple[str, ...] = param(
        Spec("Style layers", "The network layers whose statistics the picture takes from the style, e.g. relu1_1,relu2_1.")
    )
    content_weight: float = param(Spec("Content weight", "The weight of the content loss.", low=0.0, high=1e12, form="more"))
    style_weight: float = param(
        Spec(
            "Style weight",
            "The weight of the style loss: higher paints more style, less photo.",
            low=0.0,
            high=1e12,
            form="main",
            hint="Higher paints more style, less photo",
        )
    )
    tv_weight: float = param(
        Spec(
            "TV weight",
            "The weight of total variation, which smooths the picture.",
            low=0.0,
            high=1e12,
            form="more",
            hint="Smooths the picture",
        )
    )
    # How many times the style term enters the total: the seed's `10 * styles_l` repeats a list.
    style_repeats: int = param(
        Spec("Style repeats", "How many times the style term enters the total (the seed notebook's 10).", low=1, high=100)
    )
    init: str = param(
        Spec(
            "Start from",
            "What the picture starts as: the content image, the style image, or noise.",
            choices=("content", "style", "noise"),
            words=("the content image", "the style image", "noise"),
            form="more",
        )
    )
    seed: int = param(
        Spec("Random seed", "The seed of the noise (init noise) and of everything random.", low=0, high=2**63 - 1, form="more")
    )
    # "network": optimise the normalised network input, unclamped (the seed). "pixels": optimise RGB
    # in [0, 1] and clamp after every step, so the picture never leaves the valid range.
    image_space: str = param(
        Spec(
            "Optimised in",
            "network: the normalised network input, unclamped (the seed notebook); pixels: RGB in [0, 1], clamped after every step.",
            choices=("network", "pixels"),
            words=("the network's input", "pixels"),
        )
    )
    # Divide each layer's loss by its target's mean square, so one set of weights suits every backbone
    # (Caffe activations are ~250x torchvision's) and every layer counts alike.
    normalize_losses: bool = param(
        Spec("Normalised losses", "Divide each layer's loss by its target's mean square, so one set of weights suits every network.")
    )
    # Resize the style image to the content's area keeping its own aspect ratio, instead of stretching
    # it to the content's exact shape as the seed does.
    keep_style_aspect: bool = param(
        Spec(
            "Keep style aspect",
            "Resize the style image to the content's area keeping its aspect, rather than stretching it to the content's shape.",
        )
    )
    checkpoint_every: int = param(
        Spec("Checkpoint every", "Iterations between loss checkpoints (and saved states).", low=1, high=20000, unit="iterations"), 10
    )
    # The arithmetic of the network: Gram matrices, losses, the picture and the optimiser stay fp32 in every case.
    # "auto": bf16 where the device computes it natively (CUDA with bf16, CPUs with AMX or AVX-512 BF16), else fp32.
    precision: str = param(
        Spec(
            "Precision",
            "The network's arithmetic: auto is bf16 where the device computes it natively, else fp32; losses stay fp32.",
            choices=("fp32", "bf16", "auto"),
        ),
        "fp32",
    )
    # How many past steps L-BFGS keeps to shape its next one.
    lbfgs_history: int = param(
        Spec("L-BFGS history", "How many past steps L-BFGS keeps to shape its next one.", low=1, high=1000, unit="steps"), 100
    )
    # L-BFGS only: "strong_wolfe" searches along each step for a sufficient decrease (a few evaluations per
    # step, each job of a batch on its own); "none" takes the step as it comes (one evaluation, shared by a batch).
    line_search: str = param(
        Spec(
            "Line search",
            "L-BFGS only: strong_wolfe searches each step for a sufficient decrease; none takes it as it comes.",
            choices=("none", "strong_wolfe"),
            words=("none (each step as it comes)", "strong Wolfe"),
        ),
        "none",
    )
    # Coarse-to-fine: the picture is optimised at each of these fractions of the output size in turn (ascending,
    # the last 1), each scale starting from the previous one's result enlarged. (1.0,) is one pass at full size;
    # "auto" chooses them from the output size (`auto_scales`), see `with_schedule`.
    scales: tuple[float, ...] | str = param(
        Spec(
            "Scales",
            "Coarse to fine: fractions of the output size rising to 1 (e.g. 0.5,1), painted at each in turn; or auto (one pass up to "
            "512 px, then from 450 px up).",
            form="more",
            hint="auto (by the size), or fractions of the size rising to 1, e.g. 0.5, 1: painted at each in turn, coarse to fine",
        ),
        (1.0,),
    )
    # Iterations at each scale, adding up to `iterations`; None splits them by `split_iterations`.
    scale_iterations: tuple[int, ...] | None = param(
        Spec("Iterations per scale", "Iterations at each scale, adding up to iterations (default: shared out by the schedule)."), None
    )
    # "style": the result takes the style's colours (the seed). "content": the result keeps the content's colours
    # (its luminance recombined with the content's chroma). "histogram": the style picture is given the content's
    # colour statistics before its targets are computed, so its textures arrive in the content's palette.
    colors: str = param(
        Spec(
            "Colours from",
            "style: the style's colours; content: keep the content's (its luminance with the content's chroma); histogram: the "
            "style recoloured to the content's palette first.",
            choices=("style", "content", "histogram"),
            words=("the style image", "the content image", "the content image (the style recoloured to its palette)"),
            form="main",
            hint="Keep the photo's colours, or paint with the style image's",
        ),
        "style",
    )
    # Several style pictures: each one's share of the blend, in the pictures' order, any positive
    # numbers (normalised to sum 1 when mixed). None gives every picture the same share (and one picture all of it).
    # Not to be confused with `style_weight`, the weight of the style loss against the content loss.
    style_weights: tuple[float, ...] | None = param(
        Spec(
            "Style shares",
            f"With several style pictures (up to {MAX_STYLES}): each one's share of the blend, in their order (default: equal shares).",
            option="",
        ),
        None,
    )
    # The style picture is seen at this multiple of the content's area (at every scale): below 1 its strokes and
    # textures come out larger in the result, above 1 smaller (the network sees the style picture shrunk or enlarged).
    style_scale: float = param(
        Spec(
            "Style scale",
            "The style image's area against the picture's: below 1 paints larger strokes.",
            low=0.25,
            high=4.0,
            form="more",
            hint="the style image's area against the picture's; below 1 paints larger strokes",
        ),
        1.0,
    )
    # "gram": the squared difference of Gram matrices (the seed). "moments": the squared 2-Wasserstein distance
    # between Gaussians of the features' mean and covariance (worker/engine/losses.py moment_losses).
    style_loss: str = param(
        Spec(
            "Style measured by",
            "gram: Gram matrices (the seed notebook); moments: each style layer's feature mean and covariance.",
            choices=("gram", "moments"),
            words=("Gram matrices", "feature mean and covariance"),
            form="main",
            hint="How the picture's textures are compared with the style image's",
        ),
        "gram",
    )
    # The result file's format (shared/adapters/outputs.py); the picture itself is the same in each.
    format: str = param(
        Spec(
            "File format",
            "The result's file format; the parameters are written inside it.",
            choices=("png", "jpeg", "webp"),
            words=("PNG (lossless)", "JPEG", "WebP"),
            form="more",
        ),
        "png",
    )
    # JPEG and WebP quality (Pillow's scale); a PNG result is lossless and ignores it.
    quality: int = param(
        Spec("Quality", "JPEG and WebP quality (a PNG is lossless).", low=1, high=100, form="more", hint="JPEG and WebP only"), 92
    )
    # Coarse-to-fine: on entering a finer scale, add to the enlarged picture the photo's detail that the coarser
    # scale could not hold (the photo at the new size minus its own enlarged coarser copy), so the finer scale
    # starts from the photo's edges rather than a blur, and its few iterations go to styling them.
    photo_detail: bool = param(
        Spec(
            "Photo detail on enlarging",
            "Coarse to fine: start each finer scale from the enlarged picture plus the photo's detail it lacks.",
        ),
        False,
    )
    # Coarse-to-fine: the content weight at every scale after the first is this many times `content_weight`. The
    # first scale settles the look; at the finer ones the content layer sees the photo's smaller shapes, which the
    # style would otherwise paint over in the few iterations they get (bench/quality.py, docs/QUALITY.md).
    fine_content_factor: float = param(
        Spec(
            "Content weight factor at finer scales",
            "Coarse to fine: the content weight at every scale after the first, as a multiple of content_weight.",
            low=0.0,
            high=100.0,
        ),
        1.0,
    )
    # Coarse-to-fine: the finer scales' content weight (starting at `fine_content_factor` times content_weight)
    # follows the picture, so that its content distance stays at this multiple of the one the first scale ended
    # with; 0 keeps the weight fixed. No one fixed weight serves every pair: the one that keeps Tübingen's houses
    # under Starry Night held The Scream's palette back (docs/QUALITY.md), so the balance is set per picture.
    fine_content_hold: float = param(
        Spec(
            "Content held at finer scales",
            "Coarse to fine: the finer scales' content weight is adjusted as they run to keep the content distance at this multiple "
            "of the first scale's; 0: a fixed weight (fine_content_factor).",
            low=0.0,
            high=10.0,
        ),
        0.0,
    )
    # Coarse-to-fine: each finer scale starts again at this multiple of `learning_rate` (the step decay goes on from
    # there) instead of at the rate the schedule had reached; 0 goes on at that rate. A finer scale gets few iterations
    # (40 of 280 at 1024 px when this was measured), and at the decayed rate they moved the enlarged picture too little
    # to paint the new size's texture: Starry Night's style on Tübingen was 1.19x its 450 px picture's, restarted at 1x
    # 0.83x; the autumn oak's leaves on Rainier 0.0227, restarted at 2x 0.0173, but 2x washed Tübingen x The Scream out
    # (style 0.0224, 1.64x its 450 px picture's, where 1x gives 0.0130). Those rates were worth about a fifth of what
    # they said (see `rescale_moments`); with the moments rescaled the preset restarts at 0.5x: Rainier x the autumn
    # oak's style 0.0166 against 0.0183 at 1x and 0.0414 at 2x, Tübingen x The Scream's 0.0097 against 0.0152 at 1x
    # (docs/QUALITY.md).
    fine_lr_factor: float = param(
        Spec(
            "Learning rate at finer scales",
            "Coarse to fine: each finer scale starts again at this multiple of learning_rate, its decay going on from there; "
            "0: the rate goes on as it was.",
            low=0.0,
            high=10.0,
        ),
        0.0,
    )
    # Coarse-to-fine with Adam: its running moments are enlarged with the picture, and then multiplied by the ratio
    # of the two scales' pixel counts (the squared moments by its square). Every loss is a mean over pixels, so a
    # pixel's gradient shrinks as the picture grows (by 5.2x from 450 to 1024 px), and the enlarged moments, which
    # remember the coarse scale's gradients, made the finer scale's steps about that much smaller than the rate
    # says: Adam's squared moments forget over about a thousand steps, a finer scale gets 40. Rescaled, its steps
    # keep their size: Rainier x the autumn oak at 1024 px measured 0.920 / 0.0183 against 0.937 / 0.0227
    # (content / style, docs/QUALITY.md). Off: the moments enlarged as they were.
    rescale_moments: bool = param(
        Spec(
            "Adam moments rescaled on enlarging",
            "Coarse to fine with Adam: scale its running moments by the ratio of the scales' pixel counts, so that its steps keep their size at a finer scale.",
        ),
        False,
    )
    preset: str = field(
        default="custom",
        compare=False,
        metadata={"spec": Spec("Preset", "The starting values of every parameter: seed is the notebook exactly.", option="")},
    )

    def __post_init__(self) -> None:
        for parameter in parameters(type(self)):
            self._check(parameter)
        if isinstance(self.size, tuple) and (len(self.size) != 2 or not all(isinstance(v, int) for v in self.size)):
            raise ValueError(f"size must be [height, width] in pixels or one integer (the long side), got {self.size!r}")
        if not isinstance(self.size, (tuple, int)):
            raise ValueError(f"size must be [height, width] in pixels or one integer (the long side), got {self.size!r}")
        for name in ("content_layers", "style_layers"):
            layers = getattr(self, name)
            if (
                not isinstance(layers, tuple)
                or not layers
                or any(not isinstance(layer, str) or not LAYER_NAME.match(layer) for layer in layers)
            ):
                raise ValueError(
                    f"{name} must be a non-empty list of layer names like relu4_2, got {list(layers) if isinstance(layers, tuple) else layers!r}"
                )
        self._check_scales()
        self._check_style_weights()
        if self.line_search != "none" and self.optimizer != "lbfgs":
            raise ValueError(f"line_search {self.line_search!r} needs optimizer lbfgs, got {self.optimizer!r}")
        if not isinstance(self.weights, str) or not self.weights:
            raise ValueError("weights must name registry weights or a weights file")

    def _check(self, parameter: Parameter) -> None:
        """Refuse a value outside its spec's bounds or choices, or not of its kind (the checks a spec says; the shapes of lists below)."""
        name, spec, value = parameter.name, parameter.spec, getattr(self, parameter.name)
        if spec.low is not None and spec.high is not None:
            for number in value if name == "size" and isinstance(value, tuple) else (value,):
                if isinstance(number, bool) or not isinstance(number, (int, float)) or not spec.low <= number <= spec.high:
                    raise ValueError(f"{name} must be a number from {spec.low:g} to {spec.high:g}, got {number!r}")
        if parameter.kind == "int" and not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if parameter.kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        if spec.choices and value not in spec.choices:
            raise ValueError(f"{name} must be one of {', '.join(spec.choices)}, got {value!r}")

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


# Inclusive numeric ranges and allowed strings, by parameter name: read from the specs, for callers that want a table.
RANGES: dict[str, tuple[float, float]] = {
    parameter.name: (parameter.spec.low, parameter.spec.high)
    for parameter in parameters()
    if parameter.spec.low is not None and parameter.spec.high is not None
}
CHOICES: dict[str, tuple[str, ...]] = {parameter.name: parameter.spec.choices for parameter in parameters() if parameter.spec.choices}


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
        fine_content_hold=1.0,
        fine_lr_factor=0.5,
        rescale_moments=True,
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
