"""On the real ImageNet VGG16, the default preset makes a picture in the style that keeps the content."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.params import resolve_params
from worker.engine import build_backbone, transfer


def luminance_correlation(picture: Image.Image, reference: Image.Image) -> float:
    """Pearson correlation of the two pictures' luminance at a quarter of the size.

    Downsampling blurs away brush strokes, so what is compared is the layout of light and dark: the
    houses, the sky, the river. Content kept means a high value; a picture of the style alone scores
    what the style image itself scores against the content.
    """
    size = (picture.width // 4, picture.height // 4)
    a, b = (np.asarray(image.convert("L").resize(size, Image.BILINEAR), dtype=np.float64).ravel() for image in (picture, reference.resize(picture.size)))
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.slow
def test_default_preset_styles_tubingen_like_starry_night(images_dir, caffe_weights, tmp_path_factory):
    content = Image.open(images_dir / "tubingen.jpg").convert("RGB")
    style = Image.open(images_dir / "starry_night.jpg").convert("RGB")
    params = resolve_params({"size": 128, "iterations": 100, "checkpoint_every": 1})
    assert params.weights == "vgg16-caffe"

    checkpoints = []
    result = transfer(content, style, params, backbone=build_backbone(caffe_weights, params), on_checkpoint=checkpoints.append)
    result.image.save(tmp_path_factory.mktemp("quality") / "tubingen-starry-night.png")

    # The first checkpoint's losses are those of the starting picture, the content image itself.
    starting_style, final_style = checkpoints[0].style, checkpoints[-1].style
    assert final_style <= 0.1 * starting_style, (starting_style, final_style)
    kept = luminance_correlation(result.image, content)
    style_alone = luminance_correlation(style.resize(result.image.size), content)
    assert kept >= 0.8 and kept > style_alone + 0.3, (kept, style_alone)
