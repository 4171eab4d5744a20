"""How much memory one job needs, by output size, precision and style scale: the measured model sizes are planned by.

Standard library only, so the API can refuse at submit a job that no worker's device holds in one pass
without importing torch, and workers size their batches by the same figures (worker/engine/memory.py).

A job's peak is reached in one of two moments that never overlap: the optimisation at full size (the
picture's activations kept for the backward pass, its gradient, Adam's moments: `BYTES_PER_PIXEL` of the
output), or the forward pass that computes the style targets, under `inference_mode`, over the style picture
(`STYLE_BYTES_PER_PIXEL` of the style picture, `style_scale` times the output's area). A coarse-to-fine job
peaks at its full-size scale: what the coarse scales leave behind (their last picture, a few Gram matrices)
is within the fit's error. The coefficients are least-squares fits of
`.venv/bin/python -m bench.memory` (see docs/PERFORMANCE.md, "Memory", for the command and the machine).
"""

from __future__ import annotations

from .params import long_side_output

# Peak bytes per output pixel of the optimisation, and a fixed part (Gram matrices, workspace, the
# interpreter's allocations), per precision: what one job adds to a worker whose backbone is loaded.
BYTES_PER_PIXEL: dict[str, float] = {"fp32": 2679.0, "bf16": 2452.0}
FIXED_BYTES: dict[str, float] = {"fp32": 86e6, "bf16": 108e6}
# Peak bytes per style-picture pixel of the forward pass that computes the style targets.
STYLE_BYTES_PER_PIXEL: dict[str, float] = {"fp32": 1100.0, "bf16": 1100.0}
# A job optimised in tiles keeps at full size, per output pixel, the picture, its gradient (twice, once in the
# loop's sum), Adam's two moments and the TV term's intermediates (3 channels of fp32 each, ~10 of them) and the
# content target at relu4_2 (512 channels at 1/64 of the pixels, fp32). An estimate, not a fit.
RESIDENT_BYTES_PER_PIXEL = 200.0
# The least a pass is given however little memory seems free: a 256 x 256 crop is a 96-pixel interior inside the
# `styleq` preset's 80-pixel margins, and below that tiling costs more than it saves (the device may still run out).
MIN_PASS_PIXELS = 256 * 256
# The share of a device's memory a plan may fill: the rest is for the CUDA context, the backbone's
# weights, the allocator's fragmentation and the model's error.
HEADROOM = 0.8


def job_peak_bytes(height: int, width: int, precision: str, *, style_scale: float = 1.0) -> float:
    """Return the peak memory one job of an output (height, width) adds to a worker, by the measured model.

    `precision` "auto" (decided by the worker's device) counts as the precision that needs more.
    """
    if precision == "auto":
        return max(job_peak_bytes(height, width, known, style_scale=style_scale) for known in BYTES_PER_PIXEL)
    pixels = height * width
    return FIXED_BYTES[precision] + max(BYTES_PER_PIXEL[precision] * pixels, STYLE_BYTES_PER_PIXEL[precision] * pixels * style_scale)


def fits_one_pass(height: int, width: int, precision: str, memory_bytes: float, *, style_scale: float = 1.0) -> bool:
    """Tell whether one job of an output (height, width) fits in `HEADROOM` of a device of `memory_bytes` in one pass."""
    return job_peak_bytes(height, width, precision, style_scale=style_scale) <= memory_bytes * HEADROOM


def tiled_peak_bytes(height: int, width: int, precision: str) -> float:
    """Return the peak memory of a job of an output (height, width) optimised in the smallest tiles (worker/engine/tiles.py).

    What stays full size (`RESIDENT_BYTES_PER_PIXEL` of the output) plus one pass of `MIN_PASS_PIXELS`; the style
    targets are computed in tiles of the same size, which need less than an optimisation pass.
    """
    if precision == "auto":
        return max(tiled_peak_bytes(height, width, known) for known in BYTES_PER_PIXEL)
    return FIXED_BYTES[precision] + RESIDENT_BYTES_PER_PIXEL * height * width + BYTES_PER_PIXEL[precision] * MIN_PASS_PIXELS


def fits(height: int, width: int, precision: str, memory_bytes: float, *, style_scale: float = 1.0, tiles: bool = True) -> bool:
    """Tell whether one job of an output (height, width) fits a device of `memory_bytes`: in one pass, or else in tiles if `tiles`."""
    if fits_one_pass(height, width, precision, memory_bytes, style_scale=style_scale):
        return True
    return tiles and tiled_peak_bytes(height, width, precision) <= memory_bytes * HEADROOM


def largest_long_side(
    memory_bytes: float,
    precision: str,
    content_width: int,
    content_height: int,
    *,
    style_scale: float = 1.0,
    limit: int = 4096,
    tiles: bool = True,
) -> int | None:
    """Return the longest long side up to `limit` whose output (the content's aspect) fits (`fits`); None if not even 1 px does."""

    def fitting(long_side: int) -> bool:
        height, width = long_side_output(long_side, content_width, content_height)
        return fits(height, width, precision, memory_bytes, style_scale=style_scale, tiles=tiles)

    if not fitting(1):
        return None
    low, high = 1, limit  # fitting(low) holds; find the largest such
    while low < high:
        middle = (low + high + 1) // 2
        if fitting(middle):
            low = middle
        else:
            high = middle - 1
    return low


def batch_capacity(height: int, width: int, precision: str, *, limit: int, free_bytes: int | None, headroom: float = HEADROOM) -> int:
    """Return how many jobs of (height, width) to run as one batch: at most `limit`, and what fits in `headroom` of `free_bytes`.

    With `free_bytes` unknown (a CPU), the setting's `limit` alone decides. Never less than one.
    """
    if free_bytes is None:
        return max(1, limit)
    fits = int((free_bytes * headroom - FIXED_BYTES[precision]) // (height * width * BYTES_PER_PIXEL[precision]))
    return max(1, min(limit, fits))
