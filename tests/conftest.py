"""Fixtures shared by every test: the handed-out images and small random-weight backbones."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HANDOUT = REPO.parent / "shared"


@pytest.fixture(scope="session")
def images_dir() -> Path:
    """The test images beside the checkout (../shared/images)."""
    path = HANDOUT / "images"
    if not path.is_dir():
        pytest.fail(f"test images not found at {path}: the project expects ../shared/ beside the checkout")
    return path
