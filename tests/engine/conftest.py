"""Engine fixtures: random-weight VGG state dicts, where only the arithmetic matters."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision import models


def random_vgg_state(architecture: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Return the `features.*` state of a torchvision VGG initialised from a fixed seed."""
    torch.manual_seed(seed)
    network = getattr(models, architecture)(weights=None)
    return {key: value for key, value in network.state_dict().items() if key.startswith("features.")}


@pytest.fixture(scope="session")
def vgg19_random() -> dict[str, torch.Tensor]:
    return random_vgg_state("vgg19")


@pytest.fixture(scope="session")
def vgg16_random() -> dict[str, torch.Tensor]:
    return random_vgg_state("vgg16")


@pytest.fixture(scope="session")
def rainier(images_dir) -> Image.Image:
    return Image.open(images_dir / "rainier.jpg").convert("RGB")


@pytest.fixture(scope="session")
def autumn_oak(images_dir) -> Image.Image:
    return Image.open(images_dir / "autumn-oak.jpg").convert("RGB")
