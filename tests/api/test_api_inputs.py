"""POST /v1/jobs refuses up front what a worker would fail on: hostile params, pictures that do not decode whole, sizes the network cannot take."""

from __future__ import annotations

import io
import json

import pytest
from PIL import ExifTags, Image

from styleq.shared.adapters.images import IMAGE_FORMATS
from tests.api.support import assert_error, count_jobs, image_bytes, submit, upload_files


def nested(opening: str, closing: str, depth: int, inner: str = "") -> str:
    return opening * depth + inner + closing * depth


HOSTILE_PARAMS = {
    "a list 5,000 deep": nested("[", "]", 5000),
    "an object 5,000 deep": nested('{"a": ', "}", 5000, "1"),
    "a size 5,000 deep": '{"size": ' + nested("[", "]", 5000) + "}",
    "a size 600 deep, which still parses": '{"size": ' + nested("[", "]", 600) + "}",
    "layers 900 deep": '{"style_layers": ' + nested("[", "]", 900, '"relu1_1"') + "}",
    "a list three deep where a number goes": '{"scales": [[[0.5]], 1]}',
    "a number past the float range": '{"learning_rate": 1e400}',
    "iterations past the float range": '{"iterations": 1e400}',
    "an integer of 5,000 digits": '{"seed": ' + "9" * 5000 + "}",
    "an integer of 4,000 digits": '{"seed": 1' + "0" * 4000 + "}",
    "a lone surrogate as weights": '{"weights": "\\ud800"}',
    "a NUL in a parameter name": '{"\\u0000size": 64}',
    "a list as the preset": '{"preset": ["seed"]}',
    "an object as the preset": '{"preset": {"name": "seed"}}',
    "an object as the size": '{"size": {"height": 300}}',
    "true as the size": '{"size": true}',
    "a fraction in the size": '{"size": [300.5, 450]}',
    "an empty layer name": '{"content_layers": "relu4_2,"}',
    "null": "null",
    "a bare string": '"params"',
    "Infinity": '{"tv_weight": Infinity}',
    "duplicate keys, the last out of range": '{"iterations": 10, "iterations": 0}',
    "a long side the network cannot take": '{"size": 16}',
}


@pytest.mark.parametrize("text", list(HOSTILE_PARAMS.values()), ids=list(HOSTILE_PARAMS))
def test_malformed_or_hostile_params_are_a_4xx_json_error_and_store_nothing(app, client, keys, settings, text):
    response = submit(client, keys.headers("alice"), params=text)

    assert 400 <= response.status_code < 500, response.get_data(as_text=True)[:500]
    assert_error(response, response.status_code, "invalid_params")
    assert count_jobs(app) == 0 and upload_files(settings) == []


def test_params_nested_deeper_than_any_parameter_needs_are_refused_saying_so(client, keys):
    response = submit(client, keys.headers("alice"), params=nested("[", "]", 5000))

    error = assert_error(response, 400, "invalid_params")
    assert "nests deeper than" in error["message"]


def cut_short(kind: str) -> bytes:
    """A picture of noise in `kind`, its file cut off after two thirds: the header is whole, the pixels are not."""
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, kind)
    whole = buffer.getvalue()
    return whole[: len(whole) * 2 // 3]


@pytest.mark.parametrize("role", ["content", "style"])
@pytest.mark.parametrize("kind", IMAGE_FORMATS)
def test_a_picture_cut_short_is_refused_naming_its_role_and_stores_nothing(app, client, keys, settings, kind, role):
    response = submit(client, keys.headers("alice"), **{role: cut_short(kind)})

    error = assert_error(response, 400, "invalid_image")
    assert f"the {role} image is damaged or incomplete" in error["message"]
    assert count_jobs(app) == 0 and upload_files(settings) == []


def test_a_long_side_that_leaves_the_short_side_too_small_names_the_smallest_that_works(app, client, keys):
    content = image_bytes(size=(48, 32))

    refused = submit(client, keys.headers("alice"), content=content, params=json.dumps({"size": 16}))
    accepted = submit(client, keys.headers("alice"), content=content, params=json.dumps({"size": 24}))

    error = assert_error(refused, 422, "invalid_params")
    assert "16x11" in error["message"] and "at least 16 pixels on each side" in error["message"]
    assert "the smallest size that works for this content is 24" in error["message"]
    assert accepted.status_code == 202 and count_jobs(app) == 1


def test_a_content_too_narrow_for_any_long_side_is_told_to_give_height_and_width(app, client, keys):
    narrow = image_bytes(size=(10000, 10))

    refused = submit(client, keys.headers("alice"), content=narrow, params=json.dumps({"size": 64}))
    accepted = submit(client, keys.headers("alice"), content=narrow, params=json.dumps({"size": [16, 64]}))

    error = assert_error(refused, 422, "invalid_params")
    assert "10000x10" in error["message"] and "[height, width]" in error["message"]
    assert accepted.status_code == 202 and count_jobs(app) == 1


def test_the_output_is_held_to_the_services_longest_side(client, keys, settings):
    content = image_bytes(size=(48, 32))  # 640 on the long side makes 640x427
    assert settings.max_size == 640

    assert submit(client, keys.headers("alice"), content=content, params=json.dumps({"size": 640})).status_code == 202
    refused = submit(client, keys.headers("alice"), content=content, params=json.dumps({"size": [300, 641]}))
    message = assert_error(refused, 422, "invalid_params")["message"]
    assert "641 wide and 300 high, longer than this service's limit of 640 pixels on the long side" in message


def test_the_size_check_sees_the_content_upright_as_the_worker_will(client, keys):
    # Stored 1,000 wide and 40 high with EXIF orientation 6 ("turn 90 degrees clockwise"): upright, 40 wide and 1,000 high.
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (1000, 40), (90, 120, 30)).save(buffer, "JPEG", exif=exif.tobytes())

    response = submit(client, keys.headers("alice"), content=buffer.getvalue(), params=json.dumps({"size": 300}))

    assert "the 40x1000 (width x height) content into 12x300" in assert_error(response, 422, "invalid_params")["message"]
