"""Parameters the API checks without the engine agree with the engine: weight names, sizes."""

from __future__ import annotations

import pytest

from shared.params import DEFAULT_PRESET, PRESETS, WEIGHTS_NAMES, parse_size
from worker.engine.weights import DEFAULT_WEIGHTS, REGISTRY


def test_the_weight_names_the_api_accepts_are_the_registrys():
    assert WEIGHTS_NAMES == tuple(REGISTRY)
    assert DEFAULT_WEIGHTS == PRESETS[DEFAULT_PRESET]["weights"] and all(preset["weights"] in REGISTRY for preset in PRESETS.values())


@pytest.mark.parametrize(("text", "size"), [("300x450", (300, 450)), (" 300 X 450 ", (300, 450)), ("512", 512)])
def test_a_size_is_height_by_width_or_the_long_side(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["300x", "x450", "300by450", "", "-5", "300x450x2"])
def test_anything_else_is_refused_naming_what_is_expected(text):
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_size(text)
