"""The weights and networks a worker process loads once and keeps across its jobs."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from styleq.shared.domain.params import TransferParams

from .engine import Backbone, TargetCache, build_backbone
from .engine.weights import LoadedWeights, load_weights


@dataclass
class ModelCache:
    """Weights and backbones loaded once per worker process (after fork), kept across jobs."""

    model_dir: Any
    device: torch.device
    weights: dict[str, LoadedWeights] = field(default_factory=dict)
    backbones: dict[tuple[str, tuple[str, ...]], Backbone] = field(default_factory=dict)
    # Style targets by upload hash: a service sees the same styles again and again.
    targets: TargetCache = field(default_factory=TargetCache)
    # The pool process's warm-up thread and its first job may load at once: one loads, the other waits.
    loading: threading.Lock = field(default_factory=threading.Lock)

    def backbone(self, params: TransferParams) -> Backbone:
        """Return the backbone for `params`, loading its weights from the model directory (never fetching them)."""
        key = (params.weights, params.layers)
        with self.loading:
            if key not in self.backbones:
                if params.weights not in self.weights:
                    # Only weights an operator pulled (`styleq weights pull`): a job never makes a worker download.
                    self.weights[params.weights] = load_weights(params.weights, self.model_dir)
                # One backbone per layer set is enough: a service sees few distinct presets.
                self.backbones[key] = build_backbone(self.weights[params.weights], params, self.device)
            return self.backbones[key]
