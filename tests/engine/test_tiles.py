"""Tiling: a picture larger than one pass is optimised in tiles that share one global style target, with no seams."""

from __future__ import annotations

import pytest
import torch

from styleq.shared.domain.memory import BYTES_PER_PIXEL
from styleq.shared.domain.params import resolve_params
from styleq.worker.engine import Backbone, Control, get_convention, transfer
from styleq.worker.engine.objective import Objective
from styleq.worker.engine.tiles import MIN_PASS_PIXELS, TiledObjective, needs_tiles, one_pass_pixels, plan_tiles
from styleq.worker.engine.transfer import image_to_tensor

STYLEQ = resolve_params({"precision": "fp32"})
# 192x192 in passes of at most 30,976 pixels (the least the 80-pixel margins allow): 2 x 2 tiles, so the gradient crosses
# a vertical, a horizontal border and a corner.
SIZE, BUDGET = (192, 192), 30_976
# Runs with layers up to relu4_2 (48-pixel margins), so small pictures make several tiles: a coarse scale in one
# pass (one iteration), then the full size, 128 x 192, in 2 x 2 tiles of at most 16,200 pixels (two iterations).
TILED_RUN = {
    "size": [128, 192],
    "iterations": 3,
    "checkpoint_every": 1,
    "scales": [0.5, 1],
    "scale_iterations": [1, 2],
    "precision": "fp32",
    "style_layers": ["relu1_1", "relu2_1", "relu3_1", "relu4_1"],
}
TILED_BUDGET = 16_200


@pytest.fixture(scope="module")
def backbone(vgg16_random) -> Backbone:
    return Backbone("vgg16", vgg16_random, get_convention("caffe"), STYLEQ.layers)


def test_tiles_own_every_pixel_once_stay_within_the_budget_and_are_smaller_at_the_edges(backbone):
    plan = plan_tiles((1364, 2048), 512 * 1024, backbone, STYLEQ.layers)

    owners = torch.zeros(1364, 2048, dtype=torch.int32)
    for tile in plan.tiles:
        top, bottom, left, right = tile.interior
        owners[top:bottom, left:right] += 1
        assert tile.pixels <= 512 * 1024
        # The crop reaches the margin past every inner edge of the interior, and stops at the picture's edges.
        assert tile.crop == (
            max(0, top - plan.margin),
            min(1364, bottom + plan.margin),
            max(0, left - plan.margin),
            min(2048, right + plan.margin),
        )
    assert bool((owners == 1).all())
    # relu5_1 is 16 pixels a step and reads 73 pixels past its own: 80-pixel margins, inner edges on multiples of 16.
    assert plan.margin == 80 and all(edge % 16 == 0 for edge in plan.rows[1:-1] + plan.columns[1:-1])
    assert (len(plan.rows) - 1, len(plan.columns) - 1) == (2, 4)
    corner, middle = plan.tiles[0], plan.tiles[1]
    assert corner.pixels < middle.pixels


def test_a_budget_under_the_smallest_tile_is_refused_naming_the_least_that_works(backbone):
    with pytest.raises(ValueError, match=r"max_pass_pixels must be at least 30976 .* 80-pixel margins\), got 20000"):
        plan_tiles((1024, 1024), 20_000, backbone, STYLEQ.layers)


def test_the_budget_comes_from_the_memory_model_and_tiles_only_what_exceeds_it():
    assert one_pass_pixels(None, "fp32", 4096 * 4096) is None  # a CPU's memory is not known: no limit
    roomy, tight = one_pass_pixels(80 * 2**30, "bf16", 4096 * 4096), one_pass_pixels(8 * 2**30, "bf16", 4096 * 4096)
    assert tight < roomy < 80 * 2**30 / BYTES_PER_PIXEL["bf16"]
    assert one_pass_pixels(2**20, "bf16", 4096 * 4096) == MIN_PASS_PIXELS
    assert needs_tiles((4096, 4096), tight) and not needs_tiles((300, 450), tight) and not needs_tiles((4096, 4096), None)


def test_the_tiled_losses_and_gradient_are_the_untiled_ones_borders_included(backbone, rainier, autumn_oak):
    content, style = image_to_tensor(rainier, SIZE), image_to_tensor(autumn_oak, SIZE)
    picture = (content + 0.2 * torch.rand(content.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    tiled = TiledObjective(STYLEQ, backbone, "fp32", torch.device("cpu"), SIZE, BUDGET)
    assert len(tiled.plan.tiles) == 4
    found = {}
    for name, objective in (("untiled", Objective(STYLEQ, backbone, "fp32", torch.device("cpu"))), ("tiled", tiled)):
        objective.set_targets([content], [objective.style_targets(style)])
        image = picture.clone().requires_grad_(True)
        terms = objective(image)
        terms[-1].sum().backward()
        found[name] = (torch.cat([term.detach() for term in terms]), image.grad)

    (untiled_terms, untiled_gradient), (tiled_terms, tiled_gradient) = found["untiled"], found["tiled"]
    torch.testing.assert_close(tiled_terms, untiled_terms, rtol=1e-5, atol=0)
    # One global style target: the gradient is the untiled one everywhere, at the borders between tiles too.
    border = torch.zeros(SIZE, dtype=torch.bool)
    for edge in tiled.plan.rows[1:-1]:
        border[edge - 8 : edge + 8, :] = True
    for edge in tiled.plan.columns[1:-1]:
        border[:, edge - 8 : edge + 8] = True
    scale = untiled_gradient.abs().max()
    assert (tiled_gradient - untiled_gradient).abs().max() < 1e-4 * scale
    assert (tiled_gradient - untiled_gradient)[..., border].abs().max() < 1e-4 * scale
    assert (tiled_gradient - untiled_gradient).norm() < 1e-5 * untiled_gradient.norm()


@pytest.fixture(scope="module")
def shallow_backbone(vgg16_random) -> Backbone:
    return Backbone("vgg16", vgg16_random, get_convention("caffe"), resolve_params(TILED_RUN).layers)


def run(content, style, backbone, max_pass_pixels, values=TILED_RUN, **kwargs):
    checkpoints = []
    result = transfer(
        content,
        style,
        resolve_params(values),
        backbone=backbone,
        on_checkpoint=checkpoints.append,
        max_pass_pixels=max_pass_pixels,
        **kwargs,
    )
    return result, checkpoints


@pytest.fixture(scope="module")
def tiled_run(shallow_backbone, rainier, autumn_oak):
    return run(rainier, autumn_oak, shallow_backbone, TILED_BUDGET)


# The tests of the tiled run in one test process (one xdist group), which makes it once.
@pytest.mark.xdist_group("test_tiles_tiled_run")
def test_a_run_in_tiles_makes_the_picture_of_a_run_in_one_pass(shallow_backbone, rainier, autumn_oak, tiled_run):
    plan = plan_tiles((128, 192), TILED_BUDGET, shallow_backbone, resolve_params(TILED_RUN).layers)
    assert plan.margin == 48 and len(plan.tiles) == 4
    tiled, tiled_checkpoints = tiled_run
    whole, whole_checkpoints = run(rainier, autumn_oak, shallow_backbone, None)

    assert [(c.iteration, c.scale) for c in tiled_checkpoints] == [(c.iteration, c.scale) for c in whole_checkpoints]
    for got, want in zip(tiled_checkpoints, whole_checkpoints):
        assert got.total == pytest.approx(want.total, rel=1e-4)
    # Adam's first steps are about the size of its learning rate whatever the gradient's size, so rounding can move a pixel by a hair.
    assert (tiled.tensor - whole.tensor).abs().max() < 1 / 255


@pytest.mark.xdist_group("test_tiles_tiled_run")
@pytest.mark.parametrize("stop_at", [1, 2], ids=["at-the-change-to-the-tiled-scale", "inside-the-tiled-scale"])
def test_a_tiled_run_stopped_anywhere_resumes_exactly(shallow_backbone, rainier, autumn_oak, tiled_run, stop_at):
    whole, whole_checkpoints = tiled_run
    first: list = []
    stopped = transfer(
        rainier,
        autumn_oak,
        resolve_params(TILED_RUN),
        backbone=shallow_backbone,
        max_pass_pixels=TILED_BUDGET,
        on_checkpoint=lambda c: (first.append(c), Control.STOP if c.iteration == stop_at else None)[1],
    )
    resumed, rest = run(rainier, autumn_oak, shallow_backbone, TILED_BUDGET, state=stopped.state)

    assert stopped.canceled and stopped.state.image.shape[-2:] == ((64, 96) if stop_at == 1 else (128, 192))
    assert [c.total for c in first + rest] == [c.total for c in whole_checkpoints]
    torch.testing.assert_close(resumed.tensor, whole.tensor, rtol=0, atol=0)


def test_a_tiled_style_picture_gives_the_targets_of_one_pass(backbone, rainier, autumn_oak):
    style = image_to_tensor(autumn_oak, (240, 336))  # a style picture of its own size, larger than the budget too
    # Passes of 50,000 pixels cut it in 2 x 2 tiles; passes of the least size (BUDGET) would take many more.
    tiled = TiledObjective(STYLEQ, backbone, "fp32", torch.device("cpu"), (224, 320), 50_000).style_targets(style)
    whole = Objective(STYLEQ, backbone, "fp32", torch.device("cpu")).style_targets(style)

    for got, want in zip(tiled.grams, whole.grams):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
