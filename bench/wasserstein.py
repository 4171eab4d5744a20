"""The moments loss's distance worked out the slow, sure way: fp64 and eigendecompositions (for tests and bench/style_loss.py)."""

from __future__ import annotations

import torch

from styleq.worker.engine.losses import RIDGE, RIDGE_FLOOR


def gaussian(features: torch.Tensor, *, ridge: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the fp64 channel mean and covariance of a batch-1 feature map, with the loss's ridge if `ridge`."""
    flat = features[0].flatten(1).double()
    mean = flat.mean(1)
    centred = flat - mean[:, None]
    covariance = centred @ centred.T / flat.shape[1]
    if ridge:
        eye = torch.eye(len(mean), dtype=torch.float64, device=features.device)
        covariance = covariance + (RIDGE * torch.linalg.matrix_norm(covariance) + RIDGE_FLOOR) * eye
    return mean, covariance


def square_root(matrix: torch.Tensor) -> torch.Tensor:
    """Return the symmetric square root of a positive semi-definite matrix (negative rounding taken as zero)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def exact_distance(features: torch.Tensor, target: torch.Tensor, *, ridge: bool = True) -> float:
    """Return the per-channel squared 2-Wasserstein distance between the Gaussians of two batch-1 feature maps."""
    (m, s), (mt, st) = gaussian(features, ridge=ridge), gaussian(target, ridge=ridge)
    root = square_root(st)
    cross = torch.linalg.eigvalsh(root @ s @ root).clamp_min(0).sqrt().sum()
    return float(((m - mt).square().sum() + s.trace() + st.trace() - 2 * cross) / len(m))
