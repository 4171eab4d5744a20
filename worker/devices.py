"""What a worker tells the fleet of its device's memory, asked without touching CUDA (the parent never does)."""

from __future__ import annotations

import logging
import os
import subprocess

from styleq.shared.adapters.settings import Settings

log = logging.getLogger(__name__)


def device_memory_bytes(settings: Settings, visible_gpu: str | None) -> int | None:
    """Return the memory a job may use on this worker's device: the setting, else the GPU's total, else the host's RAM.

    `visible_gpu` is the worker's CUDA_VISIBLE_DEVICES (an index or a UUID), None on a CPU. None when
    nvidia-smi cannot say: the API then plans by the other workers, or by the setting.
    """
    if settings.device_memory_bytes is not None:
        return settings.device_memory_bytes
    if visible_gpu:
        return gpu_total_bytes(visible_gpu)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gpu_total_bytes(gpu: str) -> int | None:
    """Return GPU `gpu`'s total memory as nvidia-smi reports it, or None where it cannot."""
    command = ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", gpu.split(",")[0]]
    try:
        listing = subprocess.run(command, capture_output=True, text=True, timeout=20)
        return int(listing.stdout.split()[0]) * 2**20 if listing.returncode == 0 else None  # MiB
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        log.warning("could not ask nvidia-smi for GPU %s's memory", gpu, exc_info=True)
        return None
