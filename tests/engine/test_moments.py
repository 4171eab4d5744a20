"""The moments style loss: the 2-Wasserstein distance between Gaussians of features, its square root in fp32, its
targets (mixing linearly, derived lazily), and `style_loss="moments"` through the engine."""

from __future__ import annotations

import pytest
import torch

from bench.wasserstein import exact_distance
from styleq.shared.domain.params import PRESETS, resolve_params
from styleq.worker.engine import Backbone, Control, TargetCache, get_convention, transfer
from styleq.worker.engine.losses import RIDGE, RIDGE_FLOOR, feature_moments, moment_losses, root_traces
from styleq.worker.engine.objective import Objective, StyleTargets, _gaussian

SMALL = {"size": [24, 32], "iterations": 10, "learning_rate": 0.1, "checkpoint_every": 5, "precision": "fp32"}
# The moments loss costs a few 512x512 matrix products per deep layer and step, whatever the picture's size: the
# tests on random weights stop at relu3_1 (256 channels), where only the arithmetic is under test.
MOMENTS = {**SMALL, "style_loss": "moments", "style_layers": ["relu1_1", "relu2_1", "relu3_1"]}


def features(seed: int, batch: int = 1, channels: int = 16, side: int = 8, scale: float = 3.0) -> torch.Tensor:
    """Return ReLU-like random features (N, C, side, side): non-negative, correlated, of mean well away from zero."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(channels, channels, generator=generator)
    raw = torch.randn(batch, channels, side * side, generator=generator)
    return (torch.einsum("dc,ncp->ndp", mixing, raw) * scale + 2).relu().reshape(batch, channels, side, side)


def gram_and_mean(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a batch-1 feature map's target fields as the objective keeps them: E[x x^T] / C and E[x]."""
    flat = maps[0].flatten(1).float()
    return flat @ flat.T / (flat.shape[0] * flat.shape[1]), flat.mean(1)


def targets_of(maps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Return the three target tensors of `moment_losses` for each picture of `maps`, stacked (N, ...)."""
    fields = [gram_and_mean(maps[i : i + 1]) for i in range(maps.shape[0])]
    gaussians = [_gaussian(gram, mean) for gram, mean in fields]
    return (
        torch.stack([mean for _, mean in fields]),
        torch.stack([g.covariance for g in gaussians]),
        torch.stack([g.root for g in gaussians]),
    )


def test_features_at_their_own_statistics_are_at_distance_zero():
    maps = features(0)

    loss = moment_losses(maps, *targets_of(maps))

    # Against the features' energy E|x|^2 / C (about 30 here): zero up to fp32 rounding.
    energy = maps.square().mean().item()
    assert abs(loss.item()) < 1e-6 * energy


def test_the_distance_is_the_closed_form_w2_between_gaussians():
    maps, target = features(1), features(2)

    got = moment_losses(maps, *targets_of(target)).item()

    assert got == pytest.approx(exact_distance(maps, target), rel=1e-4)


def test_features_shifted_by_a_constant_are_the_squared_shift_per_channel_apart():
    # The same covariance (and so the same ridge) on both sides: only the means differ.
    maps = features(3)
    shift = torch.linspace(-2, 2, 16)

    loss = moment_losses(maps + shift[None, :, None, None], *targets_of(maps))

    assert loss.item() == pytest.approx(shift.square().mean().item(), rel=1e-4)


def test_a_batch_gives_each_picture_the_loss_it_gets_alone():
    maps, target = features(4, batch=3), features(5, batch=3)
    targets = targets_of(target)

    together = moment_losses(maps, *targets)

    alone = torch.cat([moment_losses(maps[i : i + 1], *(t[i : i + 1] for t in targets)) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-6, atol=0)
    assert len(set(together.tolist())) == 3


def test_the_gradient_is_finite_and_pulls_only_the_features():
    maps = features(6).requires_grad_(True)
    targets = [t.requires_grad_(True) for t in targets_of(features(7))]

    moment_losses(maps, *targets).sum().backward()

    assert maps.grad is not None and torch.isfinite(maps.grad).all() and maps.grad.abs().sum() > 0
    assert all(t.grad is None for t in targets)


def test_the_gradient_agrees_with_finite_differences():
    maps = features(8, channels=6, side=4).double().requires_grad_(True)
    targets = targets_of(features(9, channels=6, side=4))

    # In fp64 the square root converges exactly, so the analytic gradient (A^(-1/2) / 2) is the true one.
    assert torch.autograd.gradcheck(lambda x: moment_losses(x, *(t.double() for t in targets)), (maps,))


def test_the_square_root_trace_is_exact_on_a_well_conditioned_matrix():
    generator = torch.Generator().manual_seed(10)
    a = torch.randn(2, 32, 32, generator=generator)
    matrices = a @ a.transpose(1, 2) / 32 + 0.1 * torch.eye(32)

    expected = torch.linalg.eigvalsh(matrices.double()).sqrt().sum(-1)
    torch.testing.assert_close(root_traces(matrices).double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "case",
    ["more channels than pixels", "a flat style", "a flat picture", "features 1000 times the style's", "features 1000 times smaller"],
)
def test_the_loss_and_its_gradient_stay_finite_in_fp32_where_the_statistics_degenerate(case):
    channels = 64
    maps, target = features(11, channels=channels, side=8), features(12, channels=channels, side=8)
    if case == "more channels than pixels":
        maps, target = features(11, channels=channels, side=4), features(12, channels=channels, side=4)
    elif case == "a flat style":
        target = torch.full_like(target, 3.0)
    elif case == "a flat picture":
        maps = torch.full_like(maps, 3.0)
    elif case == "features 1000 times the style's":
        maps = maps * 1000
    else:
        maps = maps / 1000
    maps.requires_grad_(True)

    loss = moment_losses(maps, *targets_of(target))
    loss.sum().backward()

    assert torch.isfinite(loss).all() and torch.isfinite(maps.grad).all()
    if case != "a flat style":  # a flat style's statistics have no square root to be off by
        assert loss.item() == pytest.approx(exact_distance(maps.detach(), target), rel=1e-3)


def test_targets_of_two_styles_mixed_by_weight_are_the_targets_of_their_pooled_pixels():
    a, b = features(13), features(14)
    (gram_a, mean_a), (gram_b, mean_b) = gram_and_mean(a), gram_and_mean(b)
    pooled_mean, pooled_covariance = (m[0] for m in feature_moments(torch.cat([a, b], dim=3)))

    # Half of each: the fields mix linearly, and the covariance derived from the mixture is the pooled pixels'.
    mixed = _gaussian((gram_a + gram_b) / 2, (mean_a + mean_b) / 2)

    torch.testing.assert_close((mean_a + mean_b) / 2, pooled_mean)
    ridge = RIDGE * torch.linalg.matrix_norm(pooled_covariance) + RIDGE_FLOOR
    torch.testing.assert_close(mixed.covariance, pooled_covariance + ridge * torch.eye(16), rtol=1e-4, atol=1e-4)


def test_style_targets_derive_their_gaussians_once_and_only_with_means():
    gram, mean = gram_and_mean(features(15))
    targets = StyleTargets((gram,), (mean,))

    assert targets.gaussians is targets.gaussians
    with pytest.raises(ValueError, match="no means"):
        _ = StyleTargets((gram,)).gaussians


@pytest.fixture(scope="module")
def backbone(vgg16_random) -> Backbone:
    return Backbone("vgg16", vgg16_random, get_convention("caffe"), resolve_params({}).layers)


def test_a_moments_transfer_runs_finite_and_lowers_its_style_loss(rainier, autumn_oak, backbone):
    params = resolve_params({**MOMENTS, "iterations": 20})
    checkpoints = []

    result = transfer(rainier, autumn_oak, params, backbone=backbone, on_checkpoint=checkpoints.append)

    assert torch.isfinite(result.tensor).all()
    assert all(torch.isfinite(torch.tensor([c.content, c.style, c.tv, c.total])).all() for c in checkpoints)
    assert checkpoints[-1].style < 0.8 * checkpoints[0].style


def test_gram_is_every_presets_style_loss_and_moments_paint_another_picture(rainier, autumn_oak, backbone):
    # The Gram loss's numbers are the notebook's still: tests/engine/test_seed_parity.py.
    assert all(resolve_params({"preset": name}).style_loss == "gram" for name in PRESETS)

    gram = transfer(rainier, autumn_oak, resolve_params({**MOMENTS, "style_loss": "gram", "iterations": 3}), backbone=backbone)
    moments = transfer(rainier, autumn_oak, resolve_params({**MOMENTS, "iterations": 3}), backbone=backbone)

    assert not torch.equal(gram.tensor, moments.tensor)


def test_the_target_cache_keeps_gram_and_moments_targets_apart(autumn_oak, backbone):
    from styleq.worker.engine.transfer import image_to_tensor

    cache = TargetCache()
    style = image_to_tensor(autumn_oak, (24, 32))
    gram = Objective(resolve_params(SMALL), backbone, "fp32", torch.device("cpu")).style_targets(style, cache=cache, key="oak")
    moments = Objective(resolve_params(MOMENTS), backbone, "fp32", torch.device("cpu")).style_targets(style, cache=cache, key="oak")

    assert len(cache) == 2 and cache.hits == 0
    assert gram.means is None and moments.means is not None


def test_a_state_saved_before_style_losses_existed_resumes_as_gram(rainier, autumn_oak, backbone):
    params = resolve_params(SMALL)
    stopped = transfer(rainier, autumn_oak, params, backbone=backbone, on_checkpoint=lambda c: Control.STOP if c.iteration == 5 else None)
    old = stopped.state
    old.params = {name: value for name, value in old.params.items() if name not in ("style_loss", "format", "quality")}

    resumed = transfer(rainier, autumn_oak, params, backbone=backbone, state=old)
    whole = transfer(rainier, autumn_oak, params, backbone=backbone)

    assert torch.equal(resumed.tensor, whole.tensor)
    with pytest.raises(ValueError, match="other parameters"):
        transfer(rainier, autumn_oak, resolve_params({**SMALL, "style_loss": "moments"}), backbone=backbone, state=old)


def w2_per_layer(backbone: Backbone, picture: torch.Tensor, reference: torch.Tensor, layers: tuple[str, ...]) -> list[float]:
    """Return, per layer, the exact W2^2 (fp64, no ridge) between the Gaussians of two pictures' features, over the reference's energy."""
    with torch.no_grad():
        ours, theirs = (backbone(backbone.convention.normalize(x), layers) for x in (picture, reference))
    return [exact_distance(ours[name], theirs[name], ridge=False) / theirs[name].square().mean().item() for name in layers]


@pytest.mark.slow
def test_on_real_weights_moments_bring_the_pictures_feature_statistics_to_the_styles(rainier, autumn_oak, caffe_weights):
    from styleq.worker.engine import build_backbone
    from styleq.worker.engine.transfer import image_to_tensor

    # Each step costs about a second whatever the picture's size (the square roots at the two 512-channel layers), so
    # few steps of a larger learning rate than the preset's 0.02: measured, at 12 steps of 0.1, the style loss at
    # 0.25 of its first checkpoint's, the worst layer 0.39 of the content's distance to the style's and 0.35 of its
    # distance to the content's (at the preset's rate it took 30 steps to reach 0.21, 0.33 and 0.86).
    params = resolve_params(
        {"size": [64, 96], "iterations": 12, "learning_rate": 0.1, "checkpoint_every": 1, "style_loss": "moments", "precision": "fp32"}
    )
    backbone = build_backbone(caffe_weights, params)
    checkpoints = []

    result = transfer(rainier, autumn_oak, params, backbone=backbone, on_checkpoint=checkpoints.append)

    assert torch.isfinite(result.tensor).all() and all(torch.isfinite(torch.tensor(c.total)) for c in checkpoints)
    # The first checkpoint is the content picture's loss (after one step).
    assert checkpoints[-1].style < 0.5 * checkpoints[0].style, (checkpoints[0].style, checkpoints[-1].style)
    # Measured exactly (fp64, without the loss's ridge) at every style layer: the result's feature statistics are at
    # least twice as near the style's as the content's were, and nearer the style's than the content's own.
    content, style = image_to_tensor(rainier, (64, 96)), image_to_tensor(autumn_oak, (64, 96))
    to_style = w2_per_layer(backbone, result.tensor, style, params.style_layers)
    content_to_style = w2_per_layer(backbone, content, style, params.style_layers)
    to_content = w2_per_layer(backbone, result.tensor, content, params.style_layers)
    for layer, ours, before, theirs in zip(params.style_layers, to_style, content_to_style, to_content):
        assert ours < 0.5 * before and ours < theirs, (layer, ours, before, theirs)
