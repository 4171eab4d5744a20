"""Coarse-to-fine: a job optimised at growing scales, each starting from the last one's picture enlarged."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from styleq.shared.domain.params import (
    COARSE_LONG_SIDE,
    MAX_SCALE_STEP,
    ONE_PASS_LONG_SIDE,
    auto_scale_iterations,
    auto_scales,
    resolve_params,
)
from styleq.worker.engine import Backbone, Control, TransferJob, get_convention, transfer, transfer_batch
from styleq.worker.engine.objective import HOLD_FACTOR_RANGE, HOLD_GAIN, Objective
from styleq.worker.engine.transfer import _Run, _style_size, image_to_tensor, scale_sizes

# Four iterations at half the size, two at the full size, a checkpoint after each: every test of exact runs (one
# scale, resumes, batches) sees checkpoints on both scales and the change between them.
# The fine scale holds the coarse one's content distance and restarts the learning rate, so the exact runs carry
# the goal, the weight and the restarted rate across stops too.
C2F = {
    "preset": "seed",
    "size": [64, 96],
    "iterations": 6,
    "checkpoint_every": 1,
    "scales": [0.5, 1],
    "scale_iterations": [4, 2],
    "fine_content_hold": 1.0,
    "fine_lr_factor": 2.0,
    "rescale_moments": True,
}
# The fine scale's loss first rises for a few steps (its first steps, of the full rate now that the moments are
# rescaled, move the enlarged picture), so a run that shows it falling needs ten steps there, at the preset's half
# rate (at the seed's whole 0.3 the steps overshoot and the loss ends higher than it began); and twenty at the
# coarse scale move the picture far enough from the photo (0.11 on average, measured) that a fine scale started
# from the photo would fail its check.
TEN_FINE_STEPS = {**C2F, "iterations": 30, "checkpoint_every": 5, "scale_iterations": [20, 10], "fine_lr_factor": 0.5}


@pytest.fixture(scope="module")
def seed_backbone(vgg19_random) -> Backbone:
    return Backbone("vgg19", vgg19_random, get_convention("torchvision"), resolve_params({"preset": "seed"}).layers)


def run(content, style, backbone, values, **kwargs):
    checkpoints = []
    result = transfer(content, style, resolve_params(values), backbone=backbone, on_checkpoint=checkpoints.append, **kwargs)
    return result, checkpoints


def test_each_checkpoint_records_its_scale_and_its_preview_has_that_scale_size(rainier, autumn_oak, seed_backbone):
    result, checkpoints = run(rainier, autumn_oak, seed_backbone, C2F)

    assert [(c.iteration, c.scale) for c in checkpoints] == [(1, 0.5), (2, 0.5), (3, 0.5), (4, 0.5), (5, 1), (6, 1)]
    assert checkpoints[0].preview().size == (48, 32)
    assert checkpoints[-1].preview().size == (96, 64)
    assert result.image.size == (96, 64)


def test_the_fine_scale_starts_from_the_coarse_result_and_lowers_the_loss(rainier, autumn_oak, seed_backbone):
    _, checkpoints = run(rainier, autumn_oak, seed_backbone, TEN_FINE_STEPS)
    coarse_end, fine = checkpoints[3], checkpoints[4:]

    enlarged = torch.nn.functional.interpolate(to_tensor(coarse_end.preview())[None], size=(64, 96), mode="bilinear")
    first_fine = to_tensor(fine[0].preview())[None]
    # Five Adam steps of lr 0.3 in the network's units move pixels a little: the fine scale began from the coarse picture.
    assert (enlarged - first_fine).abs().mean() < 0.1
    assert fine[-1].total < fine[0].total


def test_one_scale_is_the_run_it_always_was(rainier, autumn_oak, seed_backbone):
    plain, plain_checkpoints = run(rainier, autumn_oak, seed_backbone, {**C2F, "scales": [1], "scale_iterations": None})
    old, old_checkpoints = run(
        rainier, autumn_oak, seed_backbone, {key: value for key, value in C2F.items() if not key.startswith("scale")}
    )

    assert [c.total for c in plain_checkpoints] == [c.total for c in old_checkpoints]
    assert all(c.scale == 1 for c in plain_checkpoints)
    torch.testing.assert_close(plain.tensor, old.tensor, rtol=0, atol=0)


@pytest.fixture(scope="module")
def whole_runs(rainier, autumn_oak, seed_backbone):
    """Return a function giving each optimizer's uninterrupted run, run once for all the stopping points compared with it."""
    found: dict[str, tuple] = {}

    def whole_run(values: dict) -> tuple:
        if values["optimizer"] not in found:
            found[values["optimizer"]] = run(rainier, autumn_oak, seed_backbone, values)
        return found[values["optimizer"]]

    return whole_run


# In one test process (one xdist group), which runs each optimizer's whole run once for all its stopping points.
@pytest.mark.xdist_group("test_scales_whole_runs")
@pytest.mark.parametrize("stop_at", [2, 4, 5], ids=["inside-the-coarse-scale", "at-the-scale-change", "inside-the-fine-scale"])
@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_a_run_stopped_anywhere_resumes_exactly_across_scales(rainier, autumn_oak, seed_backbone, whole_runs, stop_at, optimizer):
    values = {**C2F, "optimizer": optimizer, "learning_rate": 0.3 if optimizer == "adam" else 0.5}
    whole, whole_checkpoints = whole_runs(values)
    params = resolve_params(values)
    first: list = []
    stopped = transfer(
        rainier,
        autumn_oak,
        params,
        backbone=seed_backbone,
        on_checkpoint=lambda c: (first.append(c), Control.STOP if c.iteration == stop_at else None)[1],
    )
    rest: list = []
    resumed = transfer(rainier, autumn_oak, params, backbone=seed_backbone, state=stopped.state, on_checkpoint=rest.append)

    assert [c.iteration for c in first + rest] == [c.iteration for c in whole_checkpoints]
    assert [c.total for c in first + rest] == [c.total for c in whole_checkpoints]
    torch.testing.assert_close(resumed.tensor, whole.tensor, rtol=0, atol=0)


def test_a_coarse_to_fine_batch_equals_its_runs_alone(rainier, autumn_oak, images_dir, seed_backbone):
    tubingen = Image.open(images_dir / "tubingen.jpg").convert("RGB")
    params = [resolve_params({**C2F, "seed": seed}) for seed in range(2)]
    batched: dict[int, list] = {0: [], 1: []}
    results = transfer_batch(
        [TransferJob(rainier, autumn_oak, params[0]), TransferJob(tubingen, autumn_oak, params[1])],
        backbone=seed_backbone,
        on_checkpoint=lambda index, c: batched[index].append(c),
    )
    for index, content in enumerate((rainier, tubingen)):
        alone, checkpoints = run(content, autumn_oak, seed_backbone, params[index].to_dict())
        assert [c.total for c in batched[index]] == [c.total for c in checkpoints]
        torch.testing.assert_close(results[index].tensor, alone.tensor, rtol=0, atol=0)


def test_without_scale_iterations_the_coarse_scales_get_most_of_them():
    params = resolve_params({"scales": [0.25, 0.5, 1], "iterations": 500})

    # Iterations in inverse proportion to the pixels, so each scale takes about the same time: 16 : 4 : 1, but the
    # full size gets at least MIN_SCALE_SHARE of them.
    assert params.iterations_per_scale() == (380, 95, 25)
    assert resolve_params({"scales": [0.5, 1], "iterations": 500}).iterations_per_scale() == (400, 100)
    assert sum(resolve_params({"scales": [0.5, 1], "iterations": 7}).iterations_per_scale()) == 7


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"scales": [1, 0.5]}, "scales must rise strictly"),
        ({"scales": [0.5]}, "end at 1"),
        ({"scales": [0.01, 1]}, "at least 0.05"),
        ({"scales": []}, 'scales must be "auto" or a list of 1 to 8'),
        ({"scales": "half"}, 'scales must be "auto" or a list'),
        ({"scales": "auto", "scale_iterations": [10, 10]}, "scale_iterations needs explicit scales"),
        ({"scales": ["half", 1]}, 'scales must be "auto" or a list'),
        ({"scales": [0.5, 1], "scale_iterations": [10]}, "scale_iterations must be a list of 2"),
        ({"scales": [0.5, 1], "iterations": 30, "scale_iterations": [10, 10]}, "must add up to iterations"),
        ({"scales": [0.5, 1], "iterations": 30, "scale_iterations": [30, 0]}, "positive integers"),
        ({"scales": [0.25, 0.5, 1], "iterations": 2}, "at least the number of scales"),
    ],
)
def test_bad_scales_are_refused_with_a_message_naming_them(values, message):
    with pytest.raises(ValueError, match=message):
        resolve_params(values)


@pytest.mark.parametrize("long_side", [16, 300, ONE_PASS_LONG_SIDE])
def test_the_automatic_schedule_is_one_pass_up_to_512_pixels(long_side):
    assert auto_scales(long_side, long_side * 3 // 4, 16) == (1.0,)


@pytest.mark.parametrize("long_side", [513, 600, 768, 1024, 1536, 2048, 3000, 4096])
def test_above_it_the_schedule_starts_at_the_one_pass_pictures_size_and_grows_by_at_most_its_step(long_side):
    scales = auto_scales(long_side * 3 // 4, long_side, 16)
    sides = [round(long_side * scale) for scale in scales]

    assert scales[-1] == 1 and len(scales) >= 2
    assert sides[0] == pytest.approx(COARSE_LONG_SIDE, abs=1)
    steps = [b / a for a, b in itertools.pairwise(scales)]
    assert all(1 < step <= MAX_SCALE_STEP + 1e-3 for step in steps)
    # The fewest steps that do it, all about the same.
    assert max(steps) / min(steps) < 1.01 and COARSE_LONG_SIDE * MAX_SCALE_STEP ** (len(steps) - 1) < long_side


def test_a_narrow_content_starts_where_its_short_side_keeps_what_the_network_needs():
    scales = auto_scales(100, 4096, 16)  # 4096 x 100: at 450 px long, the short side would be 11 pixels

    assert round(100 * scales[0]) >= 32 and scales[-1] == 1


def test_the_styleq_preset_chooses_its_schedule_from_the_output_size_and_the_seed_stays_in_one_pass():
    styleq, seed = resolve_params({"size": 1024, "iterations": 300}), resolve_params({"preset": "seed", "size": 1024})

    assert styleq.scales == "auto" and seed.scales == (1.0,)
    written = styleq.with_schedule(1024, 768)  # a 4:3 content
    assert written.scales == auto_scales(768, 1024, 16) and len(written.scale_iterations) == len(written.scales)
    # The first scale, the one-pass picture that settles the look, gets 80 % of the budget; each finer one a fifth of it,
    # to sharpen it. The job's iterations are what it runs.
    assert written.scale_iterations == (240, 60) and written.iterations == 300
    assert resolve_params(written.to_dict()) == written  # stored and read back, as a job's parameters are
    assert seed.with_schedule(1024, 768) == seed and resolve_params({"size": 400}).with_schedule(400, 300).scales == (1.0,)
    assert resolve_params({"size": 1024, "scales": [0.5, 1]}).with_schedule(1024, 768).scale_iterations is None


@pytest.mark.parametrize(("iterations", "scales", "counts"), [(300, 3, (240, 60, 60)), (100, 2, (80, 20)), (3, 2, (2, 1)), (1, 2, (1, 1))])
def test_each_automatic_scale_gets_its_share_of_the_budget_and_at_least_one_iteration(iterations, scales, counts):
    assert auto_scale_iterations(iterations, scales) == counts


def test_with_fewer_iterations_than_scales_the_coarsest_scales_go():
    params = resolve_params({"size": 2048, "iterations": 2}).with_schedule(2048, 1536)

    assert params.scales == auto_scales(1536, 2048, 16)[-2:] and params.scale_iterations == (2, 1)


def test_an_automatic_run_is_the_run_of_its_written_schedule(rainier, autumn_oak, vgg16_random):
    # The schedule is the point, not the network: the first layer alone, for content and style, makes each step many
    # times cheaper, and the schedule (450 px first at 520 px, the iterations shared) is decided by the output's size
    # either way (the smallest side relu1_1 needs is the 16 pixels every output needs). Two iterations' budget: two at
    # the first scale and one at the full size.
    values = {
        "size": 520,
        "iterations": 2,
        "checkpoint_every": 1,
        "precision": "fp32",
        "style_layers": ["relu1_1"],
        "content_layers": ["relu1_1"],
    }
    backbone = Backbone("vgg16", vgg16_random, get_convention("caffe"), resolve_params(values).layers)
    written = resolve_params(values).with_schedule(*rainier.size)
    automatic, automatic_checkpoints = run(rainier, autumn_oak, backbone, values)
    explicit, explicit_checkpoints = run(rainier, autumn_oak, backbone, written.to_dict())

    assert written.scales == (round(COARSE_LONG_SIDE / 520, 4), 1.0) and written.scale_iterations == (2, 1)
    assert [c.scale for c in automatic_checkpoints] == [c.scale for c in explicit_checkpoints] == [written.scales[0]] * 2 + [1.0]
    assert [c.total for c in automatic_checkpoints] == [c.total for c in explicit_checkpoints]
    torch.testing.assert_close(automatic.tensor, explicit.tensor, rtol=0, atol=0)
    assert automatic.state.params == written.to_dict()  # the saved state names the schedule it ran


@pytest.mark.parametrize("style_scale", [0.25, 1, 4])
@pytest.mark.parametrize("keep_style_aspect", [True, False])
def test_the_style_is_seen_at_style_scale_times_the_contents_area_at_every_scale(autumn_oak, style_scale, keep_style_aspect):
    params = resolve_params({"size": 1024, "style_scale": style_scale, "keep_style_aspect": keep_style_aspect}).with_schedule(1024, 768)

    for height, width in scale_sizes(params, (768, 1024)):
        style_height, style_width = _style_size(params, autumn_oak, (height, width))
        assert style_height * style_width / (height * width) == pytest.approx(style_scale, rel=0.02)
        if keep_style_aspect:
            assert style_width / style_height == pytest.approx(autumn_oak.width / autumn_oak.height, rel=0.02)
        else:
            assert style_width / style_height == pytest.approx(width / height, rel=0.02)


@pytest.mark.parametrize("style_scale", [0.2, 4.5])
def test_a_style_scale_out_of_its_range_is_refused(style_scale):
    with pytest.raises(ValueError, match=r"style_scale must be a number from 0\.25 to 4"):
        resolve_params({"style_scale": style_scale})


# A learning rate so small that each scale's picture stays where that scale started it.
STILL = {
    "size": [64, 96],
    "iterations": 2,
    "scales": [0.5, 1],
    "scale_iterations": [1, 1],
    "learning_rate": 1e-6,
    "checkpoint_every": 1,
    "precision": "fp32",
    "style_layers": ["relu1_1", "relu2_1"],
    "content_layers": ["relu2_1"],
}


@pytest.fixture(scope="module")
def shallow_backbone(vgg16_random) -> Backbone:
    return Backbone("vgg16", vgg16_random, get_convention("caffe"), resolve_params(STILL).layers)


def test_with_photo_detail_a_finer_scale_starts_from_the_enlarged_picture_plus_what_the_photo_holds_beyond_it(
    rainier, autumn_oak, shallow_backbone
):
    photo = image_to_tensor(rainier, (64, 96))
    blurred = torch.nn.functional.interpolate(image_to_tensor(rainier, (32, 48)), size=(64, 96), mode="bilinear")

    with_detail, _ = run(rainier, autumn_oak, shallow_backbone, {**STILL, "photo_detail": True})
    without, _ = run(rainier, autumn_oak, shallow_backbone, {**STILL, "photo_detail": False})

    # From the photo at the coarse scale: with its detail added back, the fine scale starts from the photo itself.
    torch.testing.assert_close(with_detail.tensor, photo, atol=1e-3, rtol=0)
    torch.testing.assert_close(without.tensor, blurred, atol=1e-3, rtol=0)
    assert (photo - blurred).abs().mean() > 0.01  # the photo has detail the coarse copy lacks


def test_the_styleq_preset_adds_the_photos_detail_and_weighs_it_at_finer_scales_and_the_seed_does_neither():
    styleq, seed = resolve_params({}), resolve_params({"preset": "seed"})

    assert styleq.photo_detail and styleq.fine_content_factor == 3 and styleq.fine_content_hold == 1 and styleq.fine_lr_factor == 0.5
    assert not seed.photo_detail and seed.fine_content_factor == 1 and seed.fine_content_hold == 0 and seed.fine_lr_factor == 0
    assert styleq.rescale_moments and not seed.rescale_moments


def test_the_fine_content_factor_weighs_the_content_at_every_scale_after_the_first(rainier, autumn_oak, shallow_backbone):
    # Without the photo's detail, so the fine scale starts away from the photo and has a content loss to weigh.
    _, plain = run(rainier, autumn_oak, shallow_backbone, {**STILL, "photo_detail": False, "fine_content_factor": 1.0})
    _, weighted = run(rainier, autumn_oak, shallow_backbone, {**STILL, "photo_detail": False, "fine_content_factor": 3.0})

    assert [c.scale for c in plain] == [c.scale for c in weighted] == [0.5, 1] and plain[1].content > 1e-3
    assert weighted[0].content == pytest.approx(plain[0].content, rel=1e-5)
    assert weighted[1].content == pytest.approx(3 * plain[1].content, rel=1e-3)
    assert weighted[1].style == pytest.approx(plain[1].style, rel=1e-3)


def test_the_finer_scales_hold_the_content_distance_the_first_scale_ended_with(rainier, autumn_oak, seed_backbone):
    # Without the photo's detail the fine scale starts from the blurred coarse picture, further from the photo at
    # its size than the coarse picture was at its own: the held weight rises to pull it back.
    values = {**TEN_FINE_STEPS, "checkpoint_every": 1, "photo_detail": False}
    held, held_checkpoints = run(rainier, autumn_oak, seed_backbone, {**values, "fine_content_hold": 1.0})
    fixed, fixed_checkpoints = run(rainier, autumn_oak, seed_backbone, {**values, "fine_content_hold": 0.0})
    coarse_end = held_checkpoints[19]
    fine = held_checkpoints[20:]

    # The goal is the content term of the first scale's last iteration (the seed preset's content weight is 1).
    assert float(held.state.content_goal) == pytest.approx(coarse_end.content, rel=1e-6)
    assert fine[0].content > coarse_end.content  # the blurred start is further from the photo
    assert float(held.state.content_factor) > 1
    # Weighed more, the fine scale ends nearer the goal than with the fixed weight.
    assert abs(fine[-1].content / float(held.state.content_factor) - coarse_end.content) < abs(
        fixed_checkpoints[-1].content - coarse_end.content
    )
    assert [c.content for c in held_checkpoints[:20]] == [c.content for c in fixed_checkpoints[:20]]  # the first scale is untouched
    assert fixed.state.content_factor is not None and float(fixed.state.content_factor) == 1


def test_a_held_weight_moves_by_the_gain_towards_its_goal_and_stays_within_its_range(seed_backbone):
    objective = Objective(resolve_params({**C2F, "content_weight": 2.0}), seed_backbone, "fp32", torch.device("cpu"))
    over, under, far = torch.ones(1), torch.ones(1), torch.ones(1)
    goal = torch.tensor([0.5])
    objective.hold([over, under, far], [goal, goal, goal])

    # Content terms are the weight (2) x the factor (1) x the distance: 1.0, 0.25 and 1000 x the goal.
    objective.follow(torch.tensor([2 * 1.0, 2 * 0.25, 2 * 500.0]))

    assert float(over) == pytest.approx(math.exp(HOLD_GAIN * (2 - 1)))
    assert float(under) == pytest.approx(math.exp(HOLD_GAIN * (0.5 - 1)))
    assert float(far) == HOLD_FACTOR_RANGE[1]


@pytest.mark.parametrize("hold", [-0.5, 11])
def test_a_content_hold_out_of_its_range_is_refused(hold):
    with pytest.raises(ValueError, match=r"fine_content_hold must be a number from 0 to 10"):
        resolve_params({"fine_content_hold": hold})


@pytest.mark.parametrize(("rescale", "factor"), [(True, 0.25), (False, 1.0)])
def test_adams_moments_enlarged_with_the_picture_are_scaled_to_the_finer_scales_gradients(
    rainier, autumn_oak, seed_backbone, rescale, factor
):
    # Every loss is a mean over pixels, so at twice the side a pixel's gradient is a quarter: the moments follow.
    params = resolve_params({**C2F, "rescale_moments": rescale})
    stopped = transfer(
        rainier, autumn_oak, params, backbone=seed_backbone, on_checkpoint=lambda c: Control.STOP if c.iteration == 4 else None
    )
    coarse = stopped.state.optimizer["state"][0]
    fine = _Run(
        TransferJob(rainier, autumn_oak, params, stopped.state),
        seed_backbone,
        image_to_tensor(rainier, (32, 48)),
        None,
        torch.device("cpu"),
    )

    fine.enter_scale(1.0, (64, 96), 6)

    moments = fine.optimizer.state_dict()["state"][0]
    assert tuple(coarse["exp_avg"].shape[-2:]) == (32, 48) and tuple(moments["exp_avg"].shape[-2:]) == (64, 96)
    enlarge = lambda value: torch.nn.functional.interpolate(value, size=(64, 96), mode="bilinear", align_corners=False)  # noqa: E731
    torch.testing.assert_close(moments["exp_avg"], enlarge(coarse["exp_avg"]) * factor)
    torch.testing.assert_close(moments["exp_avg_sq"], enlarge(coarse["exp_avg_sq"]) * factor**2)
    assert float(moments["step"]) == float(coarse["step"])  # the bias correction goes on: the moments are not new


@pytest.mark.parametrize(("factor", "final_rate"), [(2.0, 0.3 * 2 * 0.5), (1.0, 0.3 * 0.5), (0.0, 0.3 * 0.5**3)])
def test_a_finer_scale_starts_again_at_fine_lr_factor_times_the_learning_rate_and_decays_from_there(
    rainier, autumn_oak, seed_backbone, factor, final_rate
):
    # Halved every two steps: the coarse scale's four steps take 0.3 to 0.075; the fine scale's two halve once more.
    values = {**C2F, "learning_rate": 0.3, "lr_decay_step": 2, "lr_decay_gamma": 0.5, "fine_lr_factor": factor}
    result, _ = run(rainier, autumn_oak, seed_backbone, values)

    assert result.state.optimizer["param_groups"][0]["lr"] == pytest.approx(final_rate)
