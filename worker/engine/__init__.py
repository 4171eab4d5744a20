"""The style-transfer engine: pure torch, no Flask, Celery, SQL, files or environment.

Its one import from the project is `shared.domain.params` (standard library only), which the API shares so
both validate alike; take `TransferParams` and `resolve_params` from there, not from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .backbone import ARCHITECTURES, CONVENTIONS, Backbone, InputConvention, get_convention, layer_index, layer_names
from .objective import TargetCache
from .precision import ChoiceStore, keep_cpu_choice_in, native_bf16, resolve_precision
from .transfer import Control, Progress, TransferJob, TransferResult, TransferState, batch_key, output_size, transfer, transfer_batch

if TYPE_CHECKING:
    from styleq.shared.domain.params import TransferParams

    from .weights import LoadedWeights


def default_device() -> torch.device:
    """Return CUDA when a GPU is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_backbone(weights: LoadedWeights, params: TransferParams, device: torch.device | str = "cpu") -> Backbone:
    """Build the frozen, truncated backbone that `params` needs from loaded weights, on `device`."""
    return Backbone(weights.architecture, weights.state_dict, weights.convention, params.layers).to(device)


__all__ = [
    "ARCHITECTURES",
    "CONVENTIONS",
    "Backbone",
    "ChoiceStore",
    "Control",
    "InputConvention",
    "Progress",
    "TargetCache",
    "TransferJob",
    "TransferResult",
    "TransferState",
    "batch_key",
    "build_backbone",
    "default_device",
    "get_convention",
    "keep_cpu_choice_in",
    "layer_index",
    "layer_names",
    "native_bf16",
    "output_size",
    "resolve_precision",
    "transfer",
    "transfer_batch",
]
