"""Which arithmetic the network runs in: fp32, or bf16 where the device computes it natively and faster."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")
# A CPU's bf16 must beat fp32 by this much in the timing for `auto` to choose it: where the two are about even,
# fp32's exact arithmetic wins.
BF16_MARGIN = 0.9
# The convolutions the timing runs, forward and backward to the input: (channels, side) of VGG16's first,
# third and fourth blocks at a small picture's sizes, each 3x3 as the network's.
_PROBE_LAYERS = ((64, 128), (256, 32), (512, 16))


class ChoiceStore(Protocol):
    """Where a host keeps the CPU's timed choice for its next processes (the worker's is a file beside the weights)."""

    def load(self, timed_on: dict[str, Any]) -> bool | None:
        """Return the choice kept for a timing under `timed_on`, or None if none was kept under those conditions."""
        ...

    def save(self, timed_on: dict[str, Any], bf16_is_faster: bool, bf16_over_fp32: float) -> None:
        """Keep a choice just timed under `timed_on`; a store that cannot keep it says so and carries on."""
        ...


# Where this process reads and keeps the CPU's choice (`keep_cpu_choice_in`); None: each process times.
_choice_store: ChoiceStore | None = None


def keep_cpu_choice_in(store: ChoiceStore | None) -> None:
    """Read and keep the CPU's timed choice of precision in `store`, so that the processes of one host time it once.

    Every pool process a worker starts (and every `styleq transfer`) would otherwise spend about a second of CPU on
    the same timing. The store is given what the choice was timed on (`timing_conditions`); a choice kept under other
    conditions (another CPU, torch or thread count) is timed again.
    """
    global _choice_store
    _choice_store = store


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
        return "bf16" if bf16_pays(device) else "fp32"
    return precision


def bf16_pays(device: torch.device | str) -> bool:
    """Tell whether `auto` runs the network in bf16 on `device`: a CUDA GPU with native bf16; a CPU with native bf16 where it is faster.

    A CPU's native bf16 is not always the faster: AVX-512 BF16 on an AMD Zen 4 ran a job about twice as fast as
    fp32; on an Intel Xeon (family 6, model 207, no AMX) 1.20-1.34x slower from 32x48 to 150x225 and about even at
    300x450 (`python -m bench.precision_speed`). So on a CPU it is timed once per process (`_cpu_bf16_is_faster`).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return native_bf16(device) and _cpu_bf16_is_faster()
    return native_bf16(device)


@functools.cache
def _cpu_bf16_is_faster() -> bool:
    """Tell whether bf16 beat fp32 by `BF16_MARGIN` in the medians of `_timed_rounds`: once per process (about a
    second), or once per host where a choice file is kept (`keep_cpu_choice_in`)."""
    timed_on = timing_conditions()
    kept = _choice_store.load(timed_on) if _choice_store is not None else None
    if kept is not None:
        log.info("auto precision is %s on this CPU (timed by an earlier process on this host)", "bf16" if kept else "fp32")
        return kept
    bf16_seconds, fp32_seconds = (statistics.median(times) for times in zip(*_timed_rounds()))
    faster = bf16_seconds < BF16_MARGIN * fp32_seconds
    log.info(
        "bf16 convolutions took %.2fx fp32's on this CPU: auto precision is %s", bf16_seconds / fp32_seconds, "bf16" if faster else "fp32"
    )
    if _choice_store is not None:
        _choice_store.save(timed_on, faster, bf16_seconds / fp32_seconds)
    return faster


def timing_conditions() -> dict[str, Any]:
    """Return what the timing's answer depends on, as JSON values: the CPU, torch, the threads and the probe itself."""
    return {
        "cpu": _cpu_identity(),
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "margin": BF16_MARGIN,
        "probe": [list(layer) for layer in _PROBE_LAYERS],
    }


def _cpu_identity() -> str:
    """Return the CPU's model and a digest of its flags (Linux's /proc/cpuinfo), or the platform's name for it elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in lines:  # the first processor's entries; every core of a host is the same model
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    flags = hashlib.sha256(fields.get("flags", "").encode()).hexdigest()[:16]
    return f"{fields.get('model name', platform.machine())} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}, flags {flags})"


def _timed_rounds(rounds: int = 5) -> list[tuple[float, float]]:
    """Time a few of VGG16's convolutions, forward and backward to the input, in bf16 (channels-last, as the backbone runs them) and in fp32.

    Returns (bf16 seconds, fp32 seconds) for each round, on the threads torch has now. The two alternate, so a
    machine busy with something else slows both alike.
    """
    generator = torch.Generator().manual_seed(0)
    layers = [
        (nn.Conv2d(channels, channels, 3, padding=1), torch.randn(1, channels, side, side, generator=generator))
        for channels, side in _PROBE_LAYERS
    ]
    bf16_layers = [
        (
            copy.deepcopy(conv).to(torch.bfloat16).to(memory_format=torch.channels_last),
            picture.to(torch.bfloat16).to(memory_format=torch.channels_last),
        )
        for conv, picture in layers
    ]

    def seconds(bf16: bool) -> float:
        started = time.perf_counter()
        for conv, picture in bf16_layers if bf16 else layers:
            picture = picture.detach().requires_grad_(True)
            conv(picture).float().square().sum().backward()
        return time.perf_counter() - started

    for bf16 in (True, False, True, False):  # the kernels are chosen and built on first use
        seconds(bf16)
    return [(seconds(True), seconds(False)) for _ in range(rounds)]


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
