"""What the benches share: device choice, a random VGG16 built as the worker builds its backbone, images, sizes."""

from __future__ import annotations

import argparse
import functools
import itertools
import platform
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from PIL import Image
from torchvision.models import vgg

from styleq.shared.domain.params import TransferParams
from styleq.shared.domain.params import parse_size as shared_parse_size
from styleq.worker.engine import Backbone, get_convention

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "images"
_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "m": 1e6,
    "mb": 1e6,
    "g": 1e9,
    "gb": 1e9,
    "t": 1e12,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
# Iterations a steady rate leaves out: oneDNN builds its kernels over about a job's first dozen iterations, and cuDNN
# chooses algorithms and the engine captures its CUDA graph in the first few (`python -m bench.overhead` shows each).
STEADY_FROM = 20


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """Add --device auto|cpu|cuda, as bench/seed_speed.py has it."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def pick_device(parser: argparse.ArgumentParser, choice: str) -> torch.device:
    """Return the device --device names; refuse cuda where none is visible."""
    if choice == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    return torch.device("cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu")


def device_name(device: torch.device) -> str:
    """Describe the device in words."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"CPU {model} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_size(text: str) -> tuple[int, int]:
    """Parse HEIGHTxWIDTH with the CLI's parser; the benches need both sides, so one number is refused."""
    try:
        size = shared_parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if isinstance(size, int):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH like 300x450 (both sides), got {text!r}")
    return size


def parse_ints(text: str) -> list[int]:
    """Parse a comma-separated list of positive integers like 1,2,4."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,2,4, got {text!r}")
    return values


def parse_bytes(text: str) -> int:
    """Parse an amount of memory like 80GiB, 16G, 512MiB or a plain number of bytes."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match[2].lower() not in _BYTE_UNITS:
        raise argparse.ArgumentTypeError(f"expected an amount like 80GiB or 16G, got {text!r}")
    return int(float(match[1]) * _BYTE_UNITS[match[2].lower()])


def steady_rate(readings: Mapping[int, float], start: int = STEADY_FROM) -> tuple[float, int]:
    """Return the seconds per iteration from the first reading at or after iteration `start` to the last, and where it began.

    `readings` map iterations to seconds on one clock (checkpoints, say). A run too short to have a reading at or
    after `start` before its last is timed from its first reading instead: the caller says so.
    """
    last = max(readings)
    begin = min((iteration for iteration in readings if start <= iteration < last), default=min(readings))
    if begin == last:
        raise ValueError(f"a rate needs two readings, got one at iteration {last}")
    return (readings[last] - readings[begin]) / (last - begin), begin


def gib(value: float) -> str:
    """Format bytes as GiB."""
    return f"{value / 2**30:.2f} GiB"


def random_vgg_features(architecture: str = "vgg16", seed: int = 0) -> dict[str, torch.Tensor]:
    """Return a `features.*` state of a randomly initialised VGG16 or VGG19, without building its 120M-weight classifier.

    The classifier would cost ~0.5 GB and seconds to initialise, and it would put a peak into a
    process's RSS before anything is measured. Values differ from torchvision's init; times and
    memory do not depend on them.
    """
    torch.manual_seed(seed)
    features = vgg.make_layers(vgg.cfgs[{"vgg16": "D", "vgg19": "E"}[architecture]])
    return {f"features.{key}": value for key, value in features.state_dict().items()}


def styleq_backbone(params: TransferParams, device: torch.device, state_dict: dict[str, torch.Tensor] | None = None) -> Backbone:
    """Build the backbone the worker builds for `params` (VGG16, Caffe convention, channels-last), random unless given weights."""
    state = state_dict if state_dict is not None else random_vgg_features("vgg16")
    return Backbone("vgg16", state, get_convention("caffe"), params.layers).to(device)


def image_paths() -> list[Path]:
    """Return the handed-out pictures (../shared/images), in name order."""
    paths = sorted(path for path in IMAGES.glob("*") if path.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not paths:
        raise SystemExit(f"no images found in {IMAGES}: the benches expect ../shared/images beside the checkout")
    return paths


@functools.cache
def _pictures() -> tuple[Image.Image, ...]:
    return tuple(Image.open(path).convert("RGB") for path in image_paths())


def cycle_images(start: int = 0) -> Iterator[Image.Image]:
    """Yield the handed-out pictures as RGB, round and round, beginning at the `start`-th."""
    return itertools.islice(itertools.cycle(_pictures()), start, None)
