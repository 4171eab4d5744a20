"""Which arithmetic the network runs in: fp32, or bf16 where the device computes it natively."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "bf16", "auto")


def native_bf16(device: torch.device | str) -> bool:
    """Tell whether `device` runs bf16 matrix work natively (CUDA with bf16, CPUs with AMX or AVX-512 BF16)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # Private probes, but the only ones torch has; without them bf16 on a CPU is emulated and slower than fp32.
        probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
        return any(probe is not None and probe() for probe in probes)
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Return "fp32" or "bf16" for a requested precision ("fp32", "bf16" or "auto") on `device`.

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


@contextlib.contextmanager
def network_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Run the block's convolutions in `precision` ("fp32" or "bf16"); losses stay fp32 (the callers cast)."""
    if precision == "bf16":
        # No cache of casts: a CUDA graph capture must not keep tensors cast outside it, and the weights,
        # which need no gradient, are never cached anyway.
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False):
            yield
    else:
        yield
