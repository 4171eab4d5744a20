"""The memory model sizes are planned by: one job's peak, what fits one pass, how many jobs share a batch."""

from __future__ import annotations

import pytest

from styleq.shared.domain.memory import (
    BYTES_PER_PIXEL,
    FIXED_BYTES,
    HEADROOM,
    MIN_PASS_PIXELS,
    RESIDENT_BYTES_PER_PIXEL,
    batch_capacity,
    fits,
    fits_one_pass,
    job_peak_bytes,
    largest_long_side,
    tiled_peak_bytes,
)
from styleq.shared.domain.params import long_side_output

GIB = 2**30


def test_the_peak_grows_with_the_pictures_pixels_and_with_the_style_scale_once_the_style_pass_is_the_larger():
    one, four = job_peak_bytes(512, 512, "fp32"), job_peak_bytes(1024, 1024, "fp32")

    assert 3.5 < four / one < 4
    assert job_peak_bytes(1024, 1024, "fp32", style_scale=0.25) == four  # the optimisation is the peak
    assert job_peak_bytes(1024, 1024, "fp32", style_scale=4) > four  # the style's forward pass is


def test_auto_precision_is_planned_as_the_precision_that_needs_more():
    needs = {precision: job_peak_bytes(2048, 2048, precision) for precision in BYTES_PER_PIXEL}

    assert job_peak_bytes(2048, 2048, "auto") == max(needs.values())


@pytest.mark.parametrize("memory", [1 * GIB, 8 * GIB, 80 * GIB])
@pytest.mark.parametrize("content", [(1024, 682), (682, 1024), (4000, 100)])
@pytest.mark.parametrize("style_scale", [0.25, 1, 4])
@pytest.mark.parametrize("tiles", [False, True])
def test_the_largest_long_side_fits_and_one_pixel_more_does_not(memory, content, style_scale, tiles):
    largest = largest_long_side(memory, "fp32", *content, style_scale=style_scale, tiles=tiles)

    assert fits(*long_side_output(largest, *content), "fp32", memory, style_scale=style_scale, tiles=tiles)
    if largest < 4096:
        assert not fits(*long_side_output(largest + 1, *content), "fp32", memory, style_scale=style_scale, tiles=tiles)


def test_tiles_hold_what_one_pass_cannot_in_the_memory_that_stays_full_size():
    # 4096 x 4096 needs about 41 GiB in one pass; in tiles, its picture, gradient and moments and one small pass.
    assert not fits_one_pass(4096, 4096, "bf16", 8 * GIB)
    assert fits(4096, 4096, "bf16", 8 * GIB) and not fits(4096, 4096, "bf16", 8 * GIB, tiles=False)
    assert (
        tiled_peak_bytes(4096, 4096, "bf16")
        == FIXED_BYTES["bf16"] + RESIDENT_BYTES_PER_PIXEL * 4096**2 + BYTES_PER_PIXEL["bf16"] * MIN_PASS_PIXELS
    )
    assert tiled_peak_bytes(4096, 4096, "auto") == max(tiled_peak_bytes(4096, 4096, known) for known in BYTES_PER_PIXEL)
    assert largest_long_side(1 * GIB, "bf16", 1024, 682) > largest_long_side(1 * GIB, "bf16", 1024, 682, tiles=False)


def test_a_device_too_small_for_any_picture_has_no_largest_size_and_a_cap_bounds_the_answer():
    assert largest_long_side(10 * 2**20, "fp32", 1024, 682) is None
    assert largest_long_side(1000 * GIB, "fp32", 1024, 682, tiles=False) == 4096
    assert largest_long_side(1000 * GIB, "fp32", 1024, 682, limit=2000) == 2000


def test_a_batch_fills_the_free_memory_up_to_its_limit_and_never_falls_under_one():
    free = 40 * GIB
    per_job = job_peak_bytes(300, 450, "bf16")

    assert batch_capacity(300, 450, "bf16", limit=8, free_bytes=free) == 8
    # The fixed part (workspace, the interpreter's own) is counted once per batch, the pictures' bytes once per job.
    assert (
        free * HEADROOM / per_job
        <= batch_capacity(300, 450, "bf16", limit=10_000, free_bytes=free)
        <= free * HEADROOM / (per_job - FIXED_BYTES["bf16"])
    )
    assert batch_capacity(4096, 4096, "bf16", limit=8, free_bytes=GIB) == 1
    assert batch_capacity(300, 450, "bf16", limit=3, free_bytes=None) == 3
