"""How much memory a device has: what the worker plans its batches by (the model of a job's needs is `shared/domain/memory.py`)."""

from __future__ import annotations

import torch


def free_device_bytes(device: torch.device | str) -> int | None:
    """Return the free memory of a CUDA device in bytes, or None for a CPU (bounded by the host, not known here)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)
