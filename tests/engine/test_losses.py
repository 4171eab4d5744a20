"""The loss terms give the numbers worked out by hand on tiny tensors, and never push on their targets."""

from __future__ import annotations

import torch

from styleq.worker.engine.losses import content_loss, gram, gram_matrices, style_loss, tv_loss


def feature_map() -> torch.Tensor:
    """Return a 1x2x2x2 feature map: channel 0 is [[1, 2], [3, 4]], channel 1 is [[0, 1], [0, -1]]."""
    return torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, -1.0]]]])


def test_gram_is_the_channel_dot_products_over_channels_times_pixels():
    # Flattened channels a = (1, 2, 3, 4) and b = (0, 1, 0, -1): a.a = 30, a.b = 2 - 4 = -2, b.b = 2.
    # Divided by 2 channels x 4 pixels = 8.
    expected = torch.tensor([[30 / 8, -2 / 8], [-2 / 8, 2 / 8]])

    torch.testing.assert_close(gram(feature_map()), expected, rtol=0, atol=0)


def test_content_loss_is_the_mean_squared_difference():
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [5.0, 4.0]]]])

    # Differences 0, 2, -2, 0; squares 0, 4, 4, 0; mean 8 / 4.
    assert content_loss(features, target).item() == 2.0


def test_content_loss_of_features_equal_to_their_target_is_zero():
    assert content_loss(feature_map(), feature_map()).item() == 0.0


def test_style_loss_is_the_mean_squared_difference_of_gram_matrices():
    target_gram = torch.tensor([[3.0, 0.0], [0.0, 0.25]])

    # gram(feature_map()) is [[3.75, -0.25], [-0.25, 0.25]]: differences 0.75, -0.25, -0.25, 0;
    # squares 0.5625, 0.0625, 0.0625, 0; mean 0.6875 / 4.
    assert style_loss(feature_map(), target_gram).item() == 0.171875


def test_style_loss_against_the_own_gram_matrix_is_zero():
    assert style_loss(feature_map(), gram(feature_map())).item() == 0.0


def test_tv_loss_is_half_the_sum_of_mean_vertical_and_mean_horizontal_steps():
    image = torch.tensor([[[[0.0, 1.0, 3.0], [4.0, 4.0, 4.0]]]])

    # Vertical steps |4-0|, |4-1|, |4-3| = 4, 3, 1: mean 8/3. Horizontal steps 1, 2 and 0, 0: mean 3/4.
    # Half of 8/3 + 3/4 = 41/24.
    torch.testing.assert_close(tv_loss(image), torch.tensor(41 / 24))


def test_tv_loss_averages_over_channels():
    # Channel 0 is the image above; channel 1 is flat, so every mean halves.
    image = torch.tensor([[[[0.0, 1.0, 3.0], [4.0, 4.0, 4.0]], [[7.0, 7.0, 7.0], [7.0, 7.0, 7.0]]]])

    torch.testing.assert_close(tv_loss(image), torch.tensor(41 / 48))


def test_tv_loss_of_a_flat_image_is_zero():
    assert tv_loss(torch.full((1, 3, 4, 5), 0.25)).item() == 0.0


def test_content_loss_pulls_only_the_features_towards_the_target():
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0], [5.0, 4.0]]]], requires_grad=True)

    content_loss(features, target).backward()

    # d/df mean((f - t)^2) = 2 (f - t) / 4 = (0, 1, -1, 0).
    torch.testing.assert_close(features.grad, torch.tensor([[[[0.0, 1.0], [-1.0, 0.0]]]]))
    assert target.grad is None


def test_style_loss_pulls_only_the_features_towards_the_target_gram():
    features = feature_map().requires_grad_(True)
    target_gram = torch.tensor([[3.0, 0.0], [0.0, 0.25]], requires_grad=True)

    style_loss(features, target_gram).backward()

    # dL/dG = 2 (G - T) / 4 = D = [[0.375, -0.125], [-0.125, 0]], and with G = F F^T / 8 and D symmetric,
    # dL/dF = 2 D F / 8 = D F / 4 for the flattened F = [[1, 2, 3, 4], [0, 1, 0, -1]].
    expected = torch.tensor([[[[0.09375, 0.15625], [0.28125, 0.40625]], [[-0.03125, -0.0625], [-0.09375, -0.125]]]])
    torch.testing.assert_close(features.grad, expected)
    assert target_gram.grad is None


def test_the_fp32_gram_backward_is_the_gradient_autograd_takes_of_its_forward():
    # One product, (dG + dG^T) F / (C P), where autograd takes two and adds them: the same gradient to rounding.
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 16, 6, 7, generator=generator).requires_grad_(True)
    target = torch.randn(2, 16, 16, generator=generator)
    (gram_matrices(features) - target).square().sum().backward()
    assert features.grad is not None
    ours, features.grad = features.grad, None
    flat = features.reshape(2, 16, -1)
    (torch.bmm(flat, flat.transpose(1, 2)) / (16 * 42) - target).square().sum().backward()

    torch.testing.assert_close(ours, features.grad, rtol=1e-5, atol=1e-6)
    assert ours.shape == features.shape and ours.is_contiguous()
