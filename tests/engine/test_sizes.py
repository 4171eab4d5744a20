"""The smallest output `shared.domain.params` allows is the smallest the network runs at: the API can refuse the rest without torch."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from styleq.shared.domain.params import resolve_params
from styleq.worker.engine import Backbone, get_convention, transfer

CONTENT = Image.new("RGB", (48, 32), (120, 160, 200))  # 3:2, so a long side leaves a short side of two thirds
STYLE = Image.new("RGB", (40, 40), (200, 90, 40))


def run(vgg16_random, params):
    backbone = Backbone("vgg16", vgg16_random, get_convention("caffe"), params.layers)
    return transfer(CONTENT, STYLE, params, backbone=backbone)


def test_the_styleq_preset_runs_at_its_smallest_long_side_and_the_network_fails_one_below(vgg16_random):
    params = resolve_params({"iterations": 1, "size": 24})
    params.check_output_size(*CONTENT.size)

    assert run(vgg16_random, params).image.size == (24, 16)
    too_small = dataclasses.replace(params, size=23)  # 23x15: relu5_1 sits behind four poolings, 15 // 16 == 0
    with pytest.raises(ValueError, match="the smallest size that works for this content is 24"):
        too_small.check_output_size(*CONTENT.size)
    with pytest.raises(RuntimeError):
        run(vgg16_random, too_small)


def test_a_pool5_layer_runs_at_32_pixels_a_side_and_the_network_fails_at_31(vgg16_random):
    params = resolve_params({"iterations": 1, "size": [32, 40], "style_layers": ["relu1_1", "pool5"]})
    params.check_output_size(*CONTENT.size)

    assert run(vgg16_random, params).image.size == (40, 32)
    too_small = dataclasses.replace(params, size=(31, 40))
    with pytest.raises(ValueError, match="at least 32 pixels on each side"):
        too_small.check_output_size(*CONTENT.size)
    with pytest.raises(RuntimeError):
        run(vgg16_random, too_small)


def test_a_style_far_narrower_than_the_content_still_gets_enough_pixels_for_pool5(vgg16_random):
    params = resolve_params({"iterations": 1, "size": [32, 40], "style_layers": ["relu1_1", "pool5"], "keep_style_aspect": True})
    narrow_style = Image.new("RGB", (400, 4), (200, 90, 40))
    backbone = Backbone("vgg16", vgg16_random, get_convention("caffe"), params.layers)

    result = transfer(CONTENT, narrow_style, params, backbone=backbone)

    assert result.image.size == (40, 32)  # the style, 400x4, was given 32 pixels on its short side, not 16
