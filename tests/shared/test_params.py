"""Parameters the API checks without the engine agree with the engine: weight names, sizes."""

from __future__ import annotations

import pytest

from shared.params import DEFAULT_PRESET, PRESETS, WEIGHTS_FILES, WEIGHTS_NAMES, installed_weights, parse_size
from worker.engine.weights import DEFAULT_WEIGHTS, REGISTRY


def test_the_weight_names_the_api_accepts_are_the_registrys():
    assert WEIGHTS_NAMES == tuple(REGISTRY)
    assert DEFAULT_WEIGHTS == PRESETS[DEFAULT_PRESET]["weights"] and all(preset["weights"] in REGISTRY for preset in PRESETS.values())


def test_the_api_knows_the_registrys_files_so_it_sees_which_weights_are_pulled(tmp_path):
    assert WEIGHTS_FILES == {name: spec.filename for name, spec in REGISTRY.items()}
    assert installed_weights(tmp_path) == ()
    (tmp_path / REGISTRY["vgg19"].filename).write_bytes(b"")
    assert installed_weights(tmp_path) == ("vgg19",)


@pytest.mark.parametrize(("text", "size"), [("300x450", (300, 450)), (" 300 X 450 ", (300, 450)), ("512", 512)])
def test_a_size_is_height_by_width_or_the_long_side(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["300x", "x450", "300by450", "", "-5", "300x450x2"])
def test_anything_else_is_refused_naming_what_is_expected(text):
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_size(text)
