"""The loss terms of Gatys et al. style transfer, exactly as the seed notebook defines them."""

from __future__ import annotations

import torch


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the mean squared difference between features and their content target."""
    return torch.square(features - target.detach()).mean()


def gram(features: torch.Tensor) -> torch.Tensor:
    """Return the channel Gram matrix of a batch-1 feature map, divided by channels x pixels."""
    channels = features.shape[1]
    pixels = features.numel() // channels
    flat = features.reshape(channels, pixels)
    return flat @ flat.T / (channels * pixels)


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Return the mean squared difference between the Gram matrix of features and a target Gram matrix."""
    return torch.square(gram(features) - target_gram.detach()).mean()


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Return the anisotropic total variation: half the sum of the mean absolute vertical and horizontal steps."""
    vertical = torch.abs(image[:, :, 1:, :] - image[:, :, :-1, :]).mean()
    horizontal = torch.abs(image[:, :, :, 1:] - image[:, :, :, :-1]).mean()
    return 0.5 * (vertical + horizontal)
