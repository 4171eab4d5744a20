"""The style-transfer engine: pure torch, no Flask, Celery, SQL or environment.

Its parameters (`shared.params`, standard library only) are shared with the API so both validate alike.
"""

from __future__ import annotations

import torch

from .backbone import ARCHITECTURES, CONVENTIONS, Backbone, InputConvention, get_convention, layer_index, layer_names
from shared.params import DEFAULT_PRESET, PRESETS, RANGES, TransferParams, resolve_params
from .objective import TargetCache
from .precision import native_bf16, resolve_precision
from .transfer import Checkpoint, Control, TransferJob, TransferResult, TransferState, batch_key, output_size, transfer, transfer_batch


def default_device() -> torch.device:
    """Return CUDA when a GPU is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_backbone(weights, params: TransferParams, device: torch.device | str = "cpu") -> Backbone:
    """Build the frozen, truncated backbone that `params` needs from loaded weights, on `device`, channels-last."""
    return Backbone(weights.architecture, weights.state_dict, weights.convention, params.layers).to(device).use_channels_last()


__all__ = [
    "ARCHITECTURES", "CONVENTIONS", "Backbone", "Checkpoint", "Control", "DEFAULT_PRESET", "InputConvention",
    "PRESETS", "RANGES", "TargetCache", "TransferJob", "TransferParams", "TransferResult", "TransferState", "batch_key",
    "build_backbone", "default_device", "get_convention", "layer_index", "layer_names", "native_bf16", "output_size",
    "resolve_params", "resolve_precision", "transfer", "transfer_batch",
]
