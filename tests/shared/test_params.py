"""Parameters the API checks without the engine agree with the engine: weight names, sizes, the smallest output."""

from __future__ import annotations

import random
import re

import pytest

from styleq.shared.domain.params import (
    CHOICES,
    DEFAULT_PRESET,
    MAX_STYLES,
    PRESETS,
    SAVED_STATE_DEFAULTS,
    WEIGHTS_FILES,
    WEIGHTS_NAMES,
    complete_saved_params,
    installed_weights,
    long_side_output,
    parse_size,
    parse_style_weights,
    resolve_params,
    smallest_long_side,
)
from styleq.worker.engine import batch_key
from styleq.worker.engine.weights import DEFAULT_WEIGHTS, REGISTRY


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


@pytest.mark.parametrize(
    ("layers", "side"),
    [(["relu1_1"], 16), (["relu4_2"], 16), (["relu5_1"], 16), (["pool4"], 16), (["conv5_3"], 16), (["relu1_1", "pool5"], 32)],
)
def test_the_smallest_side_is_what_the_deepest_layer_needs_and_never_under_an_explicit_sizes_floor(layers, side):
    params = resolve_params({"style_layers": layers, "content_layers": ["relu1_1"]})

    assert params.minimum_side == side  # tests/engine/test_sizes.py runs the network at and below it


@pytest.mark.parametrize("content", [(48, 32), (32, 48), (450, 300), (1000, 37), (37, 1000), (4000, 3000), (640, 480), (33, 32)])
def test_the_smallest_long_side_is_the_first_that_keeps_the_short_side_at_the_minimum(content):
    minimum = resolve_params({}).minimum_side

    smallest = smallest_long_side(minimum, *content)

    assert min(long_side_output(smallest, *content)) >= minimum
    assert smallest == minimum or min(long_side_output(smallest - 1, *content)) < minimum


def test_a_long_side_too_small_for_the_content_is_refused_with_the_smallest_that_works():
    with pytest.raises(
        ValueError,
        match=r"size 16 turns the 48x32 \(width x height\) content into 16x11.*at least 16 pixels on each side \(for layer relu5_1\).*smallest size that works for this content is 24",
    ):
        resolve_params({"size": 16}).check_output_size(48, 32)
    resolve_params({"size": 24}).check_output_size(48, 32)
    resolve_params({"size": 16}).check_output_size(32, 32)


def test_a_content_too_narrow_for_any_long_side_is_told_to_give_height_and_width():
    params = resolve_params({"size": 64})

    with pytest.raises(ValueError, match=r"no long side up to 4096.*\[height, width\] instead, e.g. \[16, 64\]"):
        params.check_output_size(10000, 10)
    assert params.output_size(10000, 10) == (1, 64)
    resolve_params({"size": [16, 64]}).check_output_size(10000, 10)


def test_an_explicit_size_under_what_pool5_needs_is_refused_whatever_the_content():
    params = resolve_params({"size": [16, 40], "style_layers": ["relu1_1", "pool5"]})

    with pytest.raises(ValueError, match=r"size \[16, 40\] is too small: .*at least 32 pixels on each side \(for layer pool5\)"):
        params.check_output_size(400, 300)


def test_colours_are_the_styles_by_default_in_every_preset_and_named_in_the_choices_table():
    assert CHOICES["colors"] == ("style", "content", "histogram")
    assert all(resolve_params({"preset": name}).colors == "style" for name in PRESETS)
    assert resolve_params({"colors": "content"}).to_dict()["colors"] == "content"


@pytest.mark.parametrize("colors", ["original", "Content", "", 1])
def test_any_other_colours_are_refused_naming_the_allowed_ones(colors):
    with pytest.raises(ValueError, match=r"colors must be one of style, content, histogram, got"):
        resolve_params({"colors": colors})


def test_jobs_with_other_colours_never_share_a_batch():
    assert batch_key(resolve_params({"colors": "content"})) != batch_key(resolve_params({}))


@pytest.mark.parametrize(
    ("text", "weights"), [("0.7,0.3", (0.7, 0.3)), (" 2 , 1 ", (2.0, 1.0)), ("1", (1.0,)), ("1e-3,1,1,1", (0.001, 1.0, 1.0, 1.0))]
)
def test_style_weights_are_comma_separated_positive_numbers(text, weights):
    assert parse_style_weights(text) == weights


@pytest.mark.parametrize("text", ["", "0.7,", "a,b", "1,0", "1,-1", "nan,1", "inf,1", "1e400,1", "1,1,1,1,1", "1e7,1"])
def test_anything_else_as_style_weights_is_refused(text):
    with pytest.raises(ValueError, match="style weights"):
        parse_style_weights(text)


@pytest.mark.parametrize("seed", range(5))
def test_the_shares_of_a_blend_are_its_weights_normalised_and_equal_without_weights(seed):
    rng = random.Random(seed)
    weights = [rng.uniform(1e-3, 1e3) for _ in range(rng.randint(1, MAX_STYLES))]

    shares = resolve_params({"style_weights": weights}).style_shares(len(weights))

    assert sum(shares) == pytest.approx(1, abs=1e-12)
    assert shares == pytest.approx([weight / sum(weights) for weight in weights], rel=1e-12)
    assert resolve_params({}).style_shares(len(weights)) == pytest.approx([1 / len(weights)] * len(weights))


@pytest.mark.parametrize(
    "weights",
    [[], [1, 2, 3, 4, 5], [0, 1], [-1, 1], [True, 1], ["1", 1], [10**400, 1], "1,1", [[1], 1]],
    ids=["none", "five", "zero", "negative", "a boolean", "a string", "huge", "a string list", "nested"],
)
def test_style_weights_outside_one_to_four_positive_numbers_are_refused(weights):
    with pytest.raises(ValueError, match="style_weights must be a list of 1 to 4 positive numbers"):
        resolve_params({"style_weights": weights})


def test_a_job_takes_one_to_four_styles_and_one_weight_each():
    resolve_params({}).check_style_count(4)
    resolve_params({"style_weights": [1, 2]}).check_style_count(2)
    for params, count in ((resolve_params({}), 0), (resolve_params({}), 5), (resolve_params({"style_weights": [1, 2]}), 3)):
        with pytest.raises(ValueError, match="style"):
            params.check_style_count(count)


def test_blends_of_any_weights_share_a_batch_as_the_seed_does():
    single = resolve_params({"seed": 1})
    blend = resolve_params({"seed": 2, "style_weights": [0.7, 0.3]})

    assert batch_key(single) == batch_key(blend) and batch_key(single) != batch_key(resolve_params({"tv_weight": 3.0}))


def test_the_style_loss_is_gram_in_every_preset_and_moments_on_request():
    assert CHOICES["style_loss"] == ("gram", "moments")
    assert all(resolve_params({"preset": name}).style_loss == "gram" for name in PRESETS)
    assert resolve_params({"style_loss": "moments"}).to_dict()["style_loss"] == "moments"
    with pytest.raises(ValueError, match=r"style_loss must be one of gram, moments, got 'wasserstein'"):
        resolve_params({"style_loss": "wasserstein"})


def test_jobs_with_other_style_losses_never_share_a_batch():
    assert batch_key(resolve_params({"style_loss": "moments"})) != batch_key(resolve_params({}))


def test_the_result_is_a_png_by_default_and_jpeg_or_webp_at_a_quality_from_1_to_100():
    assert (resolve_params({}).format, resolve_params({}).quality) == ("png", 92)
    assert resolve_params({"format": "webp", "quality": 1}).to_dict()["format"] == "webp"
    for values, message in [
        ({"format": "gif"}, "format must be one of png, jpeg, webp, got 'gif'"),
        ({"quality": 0}, "quality must be a number from 1 to 100, got 0"),
        ({"quality": 101}, "quality must be a number from 1 to 100, got 101"),
        ({"quality": 80.5}, "quality must be an integer, got 80.5"),
        ({"quality": True}, "quality must be a number from 1 to 100, got True"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            resolve_params(values)


def test_jobs_differing_only_in_their_file_format_share_a_batch():
    assert batch_key(resolve_params({"format": "jpeg", "quality": 70})) == batch_key(resolve_params({}))


def test_a_saved_states_parameters_gain_the_values_it_ran_with_for_parameters_added_since():
    # The preset as it ran before the parameters added since existed: one scale, no photo detail, one content weight.
    current = resolve_params(
        {
            "scales": [1.0],
            "photo_detail": False,
            "fine_content_factor": 1.0,
            "fine_content_hold": 0.0,
            "fine_lr_factor": 0.0,
            "rescale_moments": False,
        }
    ).to_dict()
    saved_before = {name: value for name, value in current.items() if name not in SAVED_STATE_DEFAULTS}

    assert complete_saved_params(saved_before) == current
    assert complete_saved_params({**saved_before, "style_loss": "moments"})["style_loss"] == "moments"
