"""How far a picture's style is from a style image's, as the quality tests and bench/large.py measure it."""

from __future__ import annotations

from PIL import Image

from styleq.worker.engine.objective import Objective
from styleq.worker.engine.transfer import image_to_tensor


def gram_distance(picture: Image.Image, style: Image.Image, objective: Objective) -> float:
    """The normalised Gram loss over the style layers of `picture` against `style` seen at the picture's area, its aspect kept.

    As the default preset's engine sees the style at one scale: the full-size style loss of a finished picture.
    """
    scale = (picture.width * picture.height / (style.width * style.height)) ** 0.5
    ours = objective.style_targets(image_to_tensor(picture, (picture.height, picture.width)))
    theirs = objective.style_targets(image_to_tensor(style, (round(style.height * scale), round(style.width * scale))))
    return sum(((gram - target).square().mean() * weight).item() for gram, target, weight in zip(ours.grams, theirs.grams, theirs.scales))
