"""Several style pictures blend into one set of style targets: each statistic mixed by the normalised weights."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
import torch
from PIL import Image

from styleq.shared.domain.params import resolve_params
from styleq.worker.engine import (
    Backbone,
    Control,
    TargetCache,
    TransferJob,
    TransferState,
    batch_key,
    get_convention,
    transfer,
    transfer_batch,
)
from styleq.worker.engine.objective import StyleTargets

TINY = {"size": [24, 32], "iterations": 10, "checkpoint_every": 5, "precision": "fp32"}


def random_targets(generator: torch.Generator, channels=(4, 8, 16)) -> StyleTargets:
    """Targets of a made-up style: a random symmetric positive matrix per layer, as a Gram matrix is."""
    grams = []
    for size in channels:
        features = torch.rand(size, 3 * size, generator=generator)
        grams.append(features @ features.T / features.shape[1])
    return StyleTargets(tuple(grams))


@pytest.mark.parametrize("seed", range(5))
def test_a_blend_is_the_weighted_sum_of_each_layers_gram_with_the_weights_normalised(seed):
    generator = torch.Generator().manual_seed(seed)
    count = random.Random(seed).randint(2, 4)
    targets = [random_targets(generator) for _ in range(count)]
    weights = [random.Random(seed * 10 + i).uniform(0.01, 10) for i in range(count)]

    blended = StyleTargets.blend(targets, weights)

    shares = [weight / sum(weights) for weight in weights]
    for layer in range(3):
        expected = sum(share * one.grams[layer] for share, one in zip(shares, targets))
        torch.testing.assert_close(blended.grams[layer], expected, rtol=1e-6, atol=1e-7)
    # Scaling every weight alike changes nothing: only their ratios count.
    again = StyleTargets.blend(targets, [weight * 1000 for weight in weights])
    for ours, theirs in zip(blended.grams, again.grams):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_the_loss_scales_of_a_blend_come_from_the_blended_gram_not_from_the_styles_scales():
    generator = torch.Generator().manual_seed(7)
    dark, bright = random_targets(generator), random_targets(generator)
    bright = StyleTargets(tuple(10 * gram for gram in bright.grams))

    blended = StyleTargets.blend([dark, bright], [1, 1])

    for gram, scale, dark_scale, bright_scale in zip(blended.grams, blended.scales, dark.scales, bright.scales):
        assert scale == pytest.approx(1 / gram.square().mean().item(), rel=1e-6)
        assert scale != pytest.approx((dark_scale + bright_scale).item() / 2, rel=0.05)


def test_a_blend_of_one_style_is_that_style_itself():
    targets = random_targets(torch.Generator().manual_seed(3))

    assert StyleTargets.blend([targets], [0.25]) is targets


@dataclass(frozen=True)
class TargetsWithMeans(StyleTargets):
    """Targets that also carry each layer's mean activation, as a style loss of first moments would."""

    means: tuple[torch.Tensor, ...] = ()
    mean_scales: tuple[torch.Tensor, ...] = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "mean_scales", tuple(1 / mean.square().mean() for mean in self.means))


def test_a_statistic_added_to_the_targets_blends_the_same_way_and_derived_fields_are_recomputed():
    generator = torch.Generator().manual_seed(11)
    first, second = (
        TargetsWithMeans(random_targets(generator).grams, means=(torch.rand(4, generator=generator), torch.rand(8, generator=generator)))
        for _ in range(2)
    )

    blended = TargetsWithMeans.blend([first, second], [3, 1])

    assert isinstance(blended, TargetsWithMeans)
    for layer in range(2):
        torch.testing.assert_close(blended.means[layer], 0.75 * first.means[layer] + 0.25 * second.means[layer])
        torch.testing.assert_close(blended.mean_scales[layer], 1 / blended.means[layer].square().mean())


@pytest.mark.parametrize(
    ("weights", "named"),
    [
        ([1], "one weight per style"),
        ([1, 2, 3], "one weight per style"),
        ([1, 0], "positive"),
        ([1, -2], "positive"),
        ([1, float("nan")], "positive"),
        ([1, float("inf")], "positive"),
    ],
    ids=["too few", "too many", "zero", "negative", "nan", "infinite"],
)
def test_blend_weights_must_be_one_positive_number_per_style(weights, named):
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=named):
        StyleTargets.blend([random_targets(generator), random_targets(generator)], weights)


@pytest.fixture(scope="module")
def backbone(vgg16_random) -> Backbone:
    return Backbone("vgg16", vgg16_random, get_convention("caffe"), resolve_params({}).layers)


@pytest.fixture(scope="module")
def starry_night(images_dir) -> Image.Image:
    return Image.open(images_dir / "starry_night.jpg").convert("RGB")


def test_a_blend_of_a_picture_with_itself_paints_what_that_picture_alone_paints(rainier, autumn_oak, backbone):
    alone = transfer(rainier, autumn_oak, resolve_params(TINY), backbone=backbone)
    twice = transfer(rainier, [autumn_oak, autumn_oak], resolve_params({**TINY, "style_weights": [0.3, 0.7]}), backbone=backbone)

    # The same targets up to rounding; Adam's steps, of the learning rate's size wherever a gradient is not
    # zero, carry that rounding into a few pixels where a gradient is nearly zero.
    difference = (twice.tensor - alone.tensor).abs()
    assert difference.mean() < 5e-4 and difference.max() < 0.01


def test_a_blend_paints_something_else_than_either_style_alone(rainier, autumn_oak, starry_night, backbone):
    params = resolve_params({**TINY, "iterations": 5})
    oak = transfer(rainier, autumn_oak, params, backbone=backbone).tensor
    night = transfer(rainier, starry_night, params, backbone=backbone).tensor
    blend = transfer(rainier, [autumn_oak, starry_night], params, backbone=backbone).tensor

    assert not torch.allclose(blend, oak, atol=1e-4) and not torch.allclose(blend, night, atol=1e-4)


def test_each_style_of_a_blend_is_cached_on_its_own_so_a_style_seen_before_costs_no_pass(rainier, autumn_oak, starry_night, backbone):
    cache = TargetCache()
    params = resolve_params({**TINY, "iterations": 1})
    transfer(rainier, autumn_oak, params, backbone=backbone, target_cache=cache)

    transfer(rainier, [starry_night, autumn_oak], params, backbone=backbone, target_cache=cache)

    assert (cache.misses, cache.hits, len(cache)) == (2, 1, 2)


def test_histogram_colours_match_each_style_of_a_blend_to_the_content(rainier, autumn_oak, starry_night, backbone):
    cache = TargetCache()
    params = resolve_params({**TINY, "iterations": 1, "colors": "histogram"})

    result = transfer(rainier, [autumn_oak, starry_night], params, backbone=backbone, target_cache=cache)

    # Each style recoloured to the content's palette is its own entry, as a style alone would be.
    assert len(cache) == 2 and result.image.size == (32, 24)


def test_a_blend_that_starts_from_the_style_starts_from_its_first_picture(rainier, autumn_oak, starry_night, backbone):
    # A learning rate so small that the picture stays where it started.
    params = resolve_params({**TINY, "iterations": 1, "init": "style", "learning_rate": 1e-6})

    first_oak = transfer(rainier, [autumn_oak, starry_night], params, backbone=backbone).tensor
    oak_alone = transfer(rainier, autumn_oak, params, backbone=backbone).tensor
    first_night = transfer(rainier, [starry_night, autumn_oak], params, backbone=backbone).tensor

    torch.testing.assert_close(first_oak, oak_alone, atol=1e-4, rtol=0)
    assert (first_oak - first_night).abs().mean() > 0.05


def test_a_blend_and_a_job_of_one_style_share_a_batch_and_each_paints_what_it_would_alone(rainier, autumn_oak, starry_night, backbone):
    single = TransferJob(rainier, autumn_oak, resolve_params(TINY))
    blend = TransferJob(rainier, [autumn_oak, starry_night], resolve_params({**TINY, "style_weights": [2, 1], "seed": 1}))
    assert batch_key(single.params) == batch_key(blend.params)

    batched = transfer_batch([single, blend], backbone=backbone)

    for job, result in zip((single, blend), batched):
        alone = transfer(job.content, job.styles, job.params, backbone=backbone)
        torch.testing.assert_close(result.tensor, alone.tensor, rtol=1e-5, atol=1e-5)


def test_a_blend_resumes_from_its_saved_state_and_refuses_a_state_of_other_weights(rainier, autumn_oak, starry_night, backbone):
    params = resolve_params({**TINY, "style_weights": [0.7, 0.3]})
    styles = [autumn_oak, starry_night]
    whole = transfer(rainier, styles, params, backbone=backbone)
    stopped = transfer(rainier, styles, params, backbone=backbone, on_checkpoint=lambda checkpoint: Control.STOP)

    resumed = transfer(rainier, styles, params, backbone=backbone, state=stopped.state)

    torch.testing.assert_close(resumed.tensor, whole.tensor, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="other parameters"):
        transfer(rainier, styles, resolve_params({**TINY, "style_weights": [0.3, 0.7]}), backbone=backbone, state=stopped.state)


def test_a_state_saved_before_blends_existed_resumes_its_job_of_one_style(rainier, autumn_oak, backbone):
    params = resolve_params(TINY)
    stopped = transfer(rainier, autumn_oak, params, backbone=backbone, on_checkpoint=lambda checkpoint: Control.STOP)
    old = stopped.state.to_dict()
    old["params"] = {name: value for name, value in old["params"].items() if name != "style_weights"}

    resumed = transfer(rainier, autumn_oak, params, backbone=backbone, state=TransferState.from_dict(old))

    # The engine writes out the automatic schedule for the content, as the API does, before it saves a state.
    assert TransferState.from_dict(old).belongs_to(params.with_schedule(*rainier.size)) and resumed.iteration == 10


@pytest.mark.parametrize(
    ("styles", "weights", "named"),
    [(0, None, "1 to 4 style pictures"), (5, None, "1 to 4 style pictures"), (2, [1.0], "1 weight"), (1, [1.0, 1.0], "2 weight")],
    ids=["none", "five", "one weight for two", "two weights for one"],
)
def test_a_job_needs_one_to_four_styles_and_one_weight_each(rainier, autumn_oak, styles, weights, named):
    with pytest.raises(ValueError, match=named):
        TransferJob(rainier, [autumn_oak] * styles, resolve_params({**TINY, "style_weights": weights}))
