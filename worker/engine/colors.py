"""Colour control (the `colors` parameter): keep the content's colours, or give the style the content's palette.

Both follow Gatys et al. 2016, "Preserving Color in Neural Artistic Style Transfer":
- "content" recombines the result's luminance with the content's chroma in YCbCr, after the optimisation
  (the paper's luminance-only variant optimises Y alone; recombining afterwards leaves the losses alone);
- "histogram" matches the style picture's RGB mean and covariance to the content's before its targets are
  computed, with the paper's "image analogies" map (symmetric matrix square roots), not its Cholesky one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# ITU-R BT.601 full-range YCbCr, as JPEG and Pillow use it: Y in [0, 1], Cb and Cr centred on 0 (Pillow adds
# 128/255). Its inverse takes each RGB channel as Y plus some chroma, so swapping Y shifts all three alike.
RGB_TO_YCBCR = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ],
    dtype=torch.float64,
)
YCBCR_TO_RGB = torch.linalg.inv(RGB_TO_YCBCR)
# The smallest variance a style's colours are taken to have along any direction (a standard deviation of
# about one level in 255): a flat style, grey say, would otherwise have its colour noise blown up without bound.
MIN_VARIANCE = 1e-5


def _mix(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 colour matrix to every pixel of a (N, 3, H, W) picture."""
    return torch.einsum("ij,njhw->nihw", matrix.to(image.device, image.dtype), image)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """Return a (N, 3, H, W) RGB picture in [0, 1] as Y, Cb, Cr (Y in [0, 1], Cb and Cr in [-0.5, 0.5])."""
    return _mix(RGB_TO_YCBCR, rgb)


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """Return the RGB picture of a (N, 3, H, W) Y, Cb, Cr one (the inverse of `rgb_to_ycbcr`, unclamped)."""
    return _mix(YCBCR_TO_RGB, ycbcr)


def keep_content_colors(styled: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Return the styled picture's luminance with the content's chroma, as RGB in [0, 1]; both (N, 3, H, W), one size."""
    # The styled picture as it would be shown: its luminance is taken from what a user sees, not from unclamped values.
    luminance = rgb_to_ycbcr(styled.clamp(0, 1))[:, :1]
    chroma = rgb_to_ycbcr(content)[:, 1:]
    # A bright luminance under a saturated chroma can leave the RGB cube; clamping there gives up a little chroma.
    return ycbcr_to_rgb(torch.cat([luminance, chroma], dim=1)).clamp(0, 1)


@dataclass(frozen=True)
class ColorStatistics:
    """The mean (3,) and covariance (3, 3) of a picture's RGB pixels, in float64 on the CPU."""

    mean: torch.Tensor
    covariance: torch.Tensor

    def key(self) -> bytes:
        """Return the statistics as bytes: exactly what a picture matched to them depends on, for a cache key."""
        return self.mean.numpy().tobytes() + self.covariance.numpy().tobytes()


def color_statistics(rgb: torch.Tensor) -> ColorStatistics:
    """Return the RGB mean and covariance of a (1, 3, H, W) picture's pixels."""
    pixels = rgb[0].flatten(1).double()
    mean = pixels.mean(dim=1)
    centred = pixels - mean[:, None]
    return ColorStatistics(mean.cpu(), (centred @ centred.T / pixels.shape[1]).cpu())


def _matrix_power(symmetric: torch.Tensor, power: float, *, floor: float = 0.0) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(symmetric)
    return vectors @ torch.diag(values.clamp_min(floor) ** power) @ vectors.T


def match_color_statistics(style: torch.Tensor, target: ColorStatistics) -> torch.Tensor:
    """Return the (1, 3, H, W) style picture mapped linearly so that its RGB mean and covariance are `target`'s.

    The map is x -> A (x - mean_style) + mean_target with A = cov_target^(1/2) cov_style^(-1/2) (the "image
    analogies" variant in Gatys et al. 2016). The result is not clamped to [0, 1]: the network reads any
    values, and clamping would pull the statistics off the target's.
    """
    source = color_statistics(style)
    transform = _matrix_power(target.covariance, 0.5) @ _matrix_power(source.covariance, -0.5, floor=MIN_VARIANCE)
    offset = target.mean - transform @ source.mean
    return _mix(transform, style) + offset.to(style.device, style.dtype)[None, :, None, None]
