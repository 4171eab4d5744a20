"""Colour control: `content` keeps the content's chroma under the styled luminance, `histogram` gives the style
the content's colour statistics, and the default `style` is the transfer it always was."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from styleq.shared.domain.params import resolve_params
from styleq.worker.engine import Backbone, Control, TargetCache, TransferState, build_backbone, get_convention, transfer
from styleq.worker.engine.colors import color_statistics, keep_content_colors, match_color_statistics, rgb_to_ycbcr, ycbcr_to_rgb
from styleq.worker.engine.transfer import image_to_tensor, tensor_to_image

SMALL = {"size": [24, 32], "iterations": 10, "learning_rate": 0.1, "checkpoint_every": 5, "precision": "fp32"}
# What "the same colours" means, in levels of 255: the mean absolute Cb and Cr difference from the content.
# Measured: under 0.0001 on random weights and on the real ones (pixels pushed out of the RGB cube lose a little).
CHROMA_TOLERANCE = 0.5


@pytest.fixture(scope="module")
def backbone(vgg16_random) -> Backbone:
    return Backbone("vgg16", vgg16_random, get_convention("caffe"), resolve_params({}).layers)


def ycbcr_levels(picture: Image.Image) -> torch.Tensor:
    """Return an 8-bit picture's Y, Cb and Cr, (1, 3, H, W), in levels of 255."""
    rgb = torch.from_numpy(np.array(picture.convert("RGB"), dtype=np.float64)).permute(2, 0, 1)[None] / 255
    return rgb_to_ycbcr(rgb) * 255


def content_at(content: Image.Image, picture: Image.Image) -> Image.Image:
    """Return the content resized as the engine resizes it for an output the size of `picture`, in 8 bits."""
    rgb = image_to_tensor(content, (picture.height, picture.width))
    return Image.fromarray(rgb[0].mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def chroma_difference(picture: Image.Image, content: Image.Image) -> float:
    """Return the mean absolute Cb and Cr difference between a result and the content it was made from, in levels."""
    return (ycbcr_levels(picture)[:, 1:] - ycbcr_levels(content_at(content, picture))[:, 1:]).abs().mean().item()


def luminance_difference(a: Image.Image, b: Image.Image) -> float:
    """Return the mean absolute difference of two pictures' luminance, in levels."""
    return (ycbcr_levels(a)[:, :1] - ycbcr_levels(b)[:, :1]).abs().mean().item()


def test_the_colour_space_is_pillows_ycbcr_and_converts_back_exactly(rainier):
    picture = rainier.resize((64, 48))
    ours = ycbcr_levels(picture) + torch.tensor([0.0, 128.0, 128.0], dtype=torch.float64)[:, None, None]
    pillows = torch.from_numpy(np.array(picture.convert("YCbCr"), dtype=np.float64)).permute(2, 0, 1)[None]

    # Pillow's fixed-point arithmetic drops the fraction of a level (measured: at most 1.002 apart).
    assert (ours - pillows).abs().max() < 1.5
    rgb = image_to_tensor(picture, (48, 64))
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, rtol=0, atol=1e-6)


def test_keeping_content_colours_takes_the_luminance_of_one_and_the_chroma_of_the_other():
    styled, content = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)).chunk(2, dim=3)
    content = 0.25 + content / 2  # away from the cube's faces, so nothing is clamped
    styled = 0.25 + styled / 2

    kept = rgb_to_ycbcr(keep_content_colors(styled, content))

    torch.testing.assert_close(kept[:, :1], rgb_to_ycbcr(styled)[:, :1], rtol=0, atol=1e-6)
    torch.testing.assert_close(kept[:, 1:], rgb_to_ycbcr(content)[:, 1:], rtol=0, atol=1e-6)


def test_a_content_colours_result_has_the_contents_chroma_and_the_styled_luminance(rainier, autumn_oak, backbone):
    styled = transfer(rainier, autumn_oak, resolve_params({**SMALL, "colors": "style"}), backbone=backbone)
    kept = transfer(rainier, autumn_oak, resolve_params({**SMALL, "colors": "content"}), backbone=backbone)

    # The style's colours moved the picture far from the content's; the kept ones did not move.
    assert chroma_difference(styled.image, rainier) > 10 * CHROMA_TOLERANCE
    assert chroma_difference(kept.image, rainier) < CHROMA_TOLERANCE
    # The light and dark are the styled picture's, which are not the content's.
    assert luminance_difference(kept.image, styled.image) < 1
    assert luminance_difference(styled.image, content_at(rainier, styled.image)) > 3


def test_content_colours_change_what_is_shown_not_what_is_optimised(rainier, autumn_oak, backbone):
    styled_checkpoints, kept_checkpoints, previews = [], [], []

    def keep_checkpoint_and_preview(checkpoint):
        kept_checkpoints.append(checkpoint)
        previews.append(checkpoint.preview())

    styled = transfer(
        rainier, autumn_oak, resolve_params({**SMALL, "colors": "style"}), backbone=backbone, on_checkpoint=styled_checkpoints.append
    )
    kept = transfer(
        rainier, autumn_oak, resolve_params({**SMALL, "colors": "content"}), backbone=backbone, on_checkpoint=keep_checkpoint_and_preview
    )

    assert [c.losses() | {"elapsed_s": 0} for c in kept_checkpoints] == [c.losses() | {"elapsed_s": 0} for c in styled_checkpoints]
    assert torch.equal(kept.state.image, styled.state.image)
    # A user watching the previews sees the colours the result will have.
    assert chroma_difference(previews[0], rainier) < CHROMA_TOLERANCE
    assert previews[-1].tobytes() == kept.image.tobytes()


def test_the_default_style_colours_leave_the_optimised_picture_untouched(rainier, autumn_oak, backbone):
    params = resolve_params(SMALL)
    result = transfer(rainier, autumn_oak, params, backbone=backbone)

    assert params.colors == "style"
    assert resolve_params({"preset": "seed"}).colors == "style"
    # In pixel space the result is the optimised picture itself, bit for bit.
    assert torch.equal(result.tensor, result.state.image)


def test_histogram_matching_gives_the_style_the_contents_mean_and_covariance(rainier, autumn_oak):
    content = image_to_tensor(rainier, (64, 96))
    style = image_to_tensor(autumn_oak, (72, 88))
    target = color_statistics(content)

    matched = color_statistics(match_color_statistics(style, target))

    # Measured: 5e-8 on the means, 3e-9 on the covariances (whose entries are up to 0.1), float32 pixels.
    torch.testing.assert_close(matched.mean, target.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(matched.covariance, target.covariance, rtol=0, atol=1e-7)
    assert (color_statistics(style).mean - target.mean).abs().max() > 0.1


def test_histogram_matching_keeps_a_flat_colour_from_blowing_up():
    grey_with_noise = 0.5 + 1e-4 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    target = color_statistics(torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)))

    matched = match_color_statistics(grey_with_noise, target)

    assert torch.isfinite(matched).all() and matched.std() < 0.1


def test_histogram_targets_are_cached_apart_from_the_styles_own_and_per_content(rainier, autumn_oak, images_dir, backbone):
    tubingen = Image.open(images_dir / "tubingen.jpg").convert("RGB")
    cache = TargetCache()
    values = {**SMALL, "iterations": 1}

    transfer(rainier, autumn_oak, resolve_params({**values, "colors": "style"}), backbone=backbone, target_cache=cache)
    transfer(rainier, autumn_oak, resolve_params({**values, "colors": "content"}), backbone=backbone, target_cache=cache)
    assert (cache.misses, cache.hits) == (1, 1)  # keeping the content's colours afterwards needs the same targets

    transfer(rainier, autumn_oak, resolve_params({**values, "colors": "histogram"}), backbone=backbone, target_cache=cache)
    transfer(tubingen, autumn_oak, resolve_params({**values, "colors": "histogram"}), backbone=backbone, target_cache=cache)
    transfer(rainier, autumn_oak, resolve_params({**values, "colors": "histogram"}), backbone=backbone, target_cache=cache)
    assert (cache.misses, cache.hits, len(cache)) == (3, 2, 3)


def test_a_cached_histogram_target_gives_the_picture_a_run_alone_gives(rainier, autumn_oak, backbone):
    params = resolve_params({**SMALL, "colors": "histogram"})
    cache = TargetCache()

    alone = transfer(rainier, autumn_oak, params, backbone=backbone)
    transfer(rainier, autumn_oak, params, backbone=backbone, target_cache=cache)
    cached = transfer(rainier, autumn_oak, params, backbone=backbone, target_cache=cache)

    assert cache.hits == 1 and torch.equal(cached.tensor, alone.tensor)


@pytest.mark.parametrize("colors", ["content", "histogram"])
def test_a_run_stopped_and_resumed_equals_one_run(rainier, autumn_oak, backbone, colors):
    params = resolve_params({**SMALL, "colors": colors})
    whole = transfer(rainier, autumn_oak, params, backbone=backbone)

    first = transfer(rainier, autumn_oak, params, backbone=backbone, on_checkpoint=lambda checkpoint: Control.STOP)
    buffer = io.BytesIO()
    torch.save(first.state.to_dict(), buffer)
    buffer.seek(0)
    state = TransferState.from_dict(torch.load(buffer, weights_only=False))
    resumed = transfer(rainier, autumn_oak, params, backbone=backbone, state=state)

    assert first.state.params["colors"] == colors and first.iteration == 5
    assert resumed.image.tobytes() == whole.image.tobytes()


def test_a_state_saved_before_colours_existed_resumes_with_the_styles_colours(rainier, autumn_oak, backbone):
    params = resolve_params(SMALL)
    first = transfer(rainier, autumn_oak, params, backbone=backbone, on_checkpoint=lambda checkpoint: Control.STOP)
    old = {name: value for name, value in first.state.params.items() if name != "colors"}
    state = TransferState.from_dict({**first.state.to_dict(), "params": old})

    assert transfer(rainier, autumn_oak, params, backbone=backbone, state=state).iteration == 10
    with pytest.raises(ValueError, match="other parameters"):
        transfer(rainier, autumn_oak, resolve_params({**SMALL, "colors": "content"}), backbone=backbone, state=state)


@pytest.mark.slow
def test_on_the_real_network_the_colours_hold_as_the_engine_docs_state(rainier, autumn_oak, caffe_weights):
    values = {"size": [64, 96], "iterations": 60}
    backbone = build_backbone(caffe_weights, resolve_params(values))
    kept, histogram = (
        transfer(rainier, autumn_oak, resolve_params({**values, "colors": colors}), backbone=backbone)
        for colors in ("content", "histogram")
    )
    # `content` optimises the very picture `style` does and changes only what is shown, bit for bit
    # (test_content_colours_change_what_is_shown_not_what_is_optimised): its saved state's picture is the `style` result.
    styled = kept.state.image
    content = image_to_tensor(rainier, (64, 96))

    # Measured on this run: 29.4 levels with the style's colours, 0.00005 with the content's (at most 0.5 on one pixel).
    assert chroma_difference(tensor_to_image(styled), rainier) > 20
    assert chroma_difference(kept.image, rainier) < CHROMA_TOLERANCE
    assert luminance_difference(kept.image, tensor_to_image(styled)) < 1

    # The style seen in the content's palette paints in it: the result's colour statistics end near the content's
    # (measured: means 0.024 apart, against 0.19 with the style's own colours; covariances 0.013 against 0.082).
    def distance(picture, part):
        return (getattr(color_statistics(picture), part) - getattr(color_statistics(content), part)).abs().max().item()

    for part in ("mean", "covariance"):
        assert distance(histogram.tensor, part) < distance(styled, part) / 3
