"""The loss terms of Gatys et al. style transfer, exactly as the seed notebook defines them.

Each term comes in a batched form that returns one value per picture of a batch (so jobs optimised
together never mix their gradients) and the notebook's batch-1 form. Gram matrices and every loss
are computed in fp32 whatever precision the network ran in: a bf16 Gram matrix keeps three decimal
digits, too few to tell a converged picture from a nearly converged one.
"""

from __future__ import annotations

import torch


def gram_matrices(features: torch.Tensor) -> torch.Tensor:
    """Return each picture's channel Gram matrix, (N, C, H, W) -> (N, C, C) in fp32, divided by channels x pixels."""
    batch, channels = features.shape[:2]
    flat = features.reshape(batch, channels, -1).float()
    pixels = flat.shape[-1]
    if features.dtype != torch.float32:
        # Features from a bf16 network: dividing by sqrt(channels x pixels) first keeps every partial sum
        # near the final value's magnitude, so no size of picture can overflow the accumulation.
        flat = flat / (channels * pixels) ** 0.5
        return torch.bmm(flat, flat.transpose(1, 2))
    return torch.bmm(flat, flat.transpose(1, 2)) / (channels * pixels)


def content_losses(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return each picture's mean squared difference between its features and its content target, (N,)."""
    return torch.square(features.float() - targets.detach()).flatten(1).mean(1)


def style_losses(features: torch.Tensor, target_grams: torch.Tensor) -> torch.Tensor:
    """Return each picture's mean squared difference between its Gram matrix and its target Gram matrix, (N,)."""
    return torch.square(gram_matrices(features) - target_grams.detach()).flatten(1).mean(1)


def tv_losses(images: torch.Tensor) -> torch.Tensor:
    """Return each picture's anisotropic total variation: half the sum of its mean absolute vertical and horizontal steps."""
    vertical = torch.abs(images[:, :, 1:, :] - images[:, :, :-1, :]).flatten(1).mean(1)
    horizontal = torch.abs(images[:, :, :, 1:] - images[:, :, :, :-1]).flatten(1).mean(1)
    return 0.5 * (vertical + horizontal)


def gram(features: torch.Tensor) -> torch.Tensor:
    """Return the channel Gram matrix of a batch-1 feature map, divided by channels x pixels."""
    return gram_matrices(features)[0]


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the mean squared difference between batch-1 features and their content target."""
    return content_losses(features, target)[0]


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Return the mean squared difference between the Gram matrix of batch-1 features and a target Gram matrix."""
    return style_losses(features, target_gram.unsqueeze(0) if target_gram.dim() == 2 else target_gram)[0]


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Return the anisotropic total variation of a batch-1 image."""
    return tv_losses(image)[0]
