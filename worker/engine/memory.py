"""How much device memory a transfer needs, so a worker can size its batches to fit.

The model is linear in the output's pixels: VGG's activations (kept for the backward pass) grow with
the picture, while the weights and the Gram matrices do not. Its coefficients are measured by
`python -m bench.memory`, per precision, on the `styleq` preset's layers (VGG16 up to relu5_1).
"""

from __future__ import annotations

import torch

# Peak bytes per output pixel of one job, and its fixed part (Gram matrices, workspace), per precision: what a job
# adds to a worker whose backbone (38 MiB of weights) is already loaded. Least-squares fit of
# `.venv/bin/python -m bench.memory --device cpu --sizes 128,256,384,512 --precisions fp32,bf16` on the 2-core
# AMD EPYC CPU (AVX2, bf16 emulated under autocast, which keeps fp32 copies: hence hardly less than fp32), each
# size in a fresh process, peak RSS minus RSS with the backbone built; within 2 % of the measurements at 384 and
# 512 px, +13 % (fp32) and +30 % (bf16) at 128 px. Only CUDA workers size batches by memory (`batch_capacity`): these
# CPU figures stand in for a GPU's until `bash bench/gpu.sh` (bench.memory --device cuda, max_memory_allocated)
# measures them there; CUDA's bf16 should need well under fp32's bytes.
BYTES_PER_PIXEL: dict[str, float] = {"fp32": 2679.0, "bf16": 2452.0}
FIXED_BYTES: dict[str, float] = {"fp32": 86e6, "bf16": 108e6}


def free_device_bytes(device: torch.device | str) -> int | None:
    """Return the free memory of a CUDA device in bytes, or None for a CPU (bounded by the host, not known here)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def batch_capacity(height: int, width: int, precision: str, *, limit: int, free_bytes: int | None, headroom: float = 0.8) -> int:
    """Return how many jobs of (height, width) to run as one batch: at most `limit`, and what fits in `headroom` of `free_bytes`.

    With `free_bytes` unknown (a CPU), the setting's `limit` alone decides. Never less than one.
    """
    if free_bytes is None:
        return max(1, limit)
    fits = int((free_bytes * headroom - FIXED_BYTES[precision]) // (height * width * BYTES_PER_PIXEL[precision]))
    return max(1, min(limit, fits))
