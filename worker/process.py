"""What one worker process builds once after fork (in a warm-up thread, or at its first job): the database engine, storage and the models."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from styleq.shared.adapters.db import make_engine, make_session_factory
from styleq.shared.adapters.settings import Settings
from styleq.shared.adapters.storage import open_storage

from .engine import default_device, keep_cpu_choice_in
from .model_cache import ModelCache
from .precision_choice import ChoiceFile
from .runner import JobRunner

log = logging.getLogger(__name__)
_runner: JobRunner | None = None
# The warm-up thread and the first task may both ask for the runner: one is built.
_runner_lock = threading.Lock()
# Set by SIGTERM in the pool process while a job runs (see celery_app): its jobs go back to the queue at their next checkpoint.
STOPPING = threading.Event()


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While the block runs a job, SIGTERM asks it to hand back instead of killing the process.

    Between jobs the pool's own handler stays, so an idle pool process still exits at once. The flag,
    once set, stays set: a worker shutting down may still hand its pool a message (the embedded broker's
    transport did, the message of the very job just handed back), and the runner sends such a job back at
    once instead of running it to the end in a worker that is meant to exit.
    """
    previous = signal.signal(signal.SIGTERM, lambda *_: STOPPING.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def job_runner(settings: Settings) -> JobRunner:
    """Return this process's runner, built on first use (never in the parent, so CUDA starts after fork)."""
    global _runner
    with _runner_lock:
        if _runner is None:
            # The host's model directory keeps the CPU's choice of precision, timed by its first process only.
            keep_cpu_choice_in(ChoiceFile(settings.models_path))
            device = default_device()
            gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
            _runner = JobRunner(
                settings,
                make_session_factory(make_engine(settings.database)),
                open_storage(settings),
                name=settings.worker_node,
                # The pid makes the lease this process's own, even if a restarted worker reuses the name.
                lease_owner=f"{settings.worker_node}/{os.getpid()}",
                gpu=gpu,
                device=device,
                models=ModelCache(settings.models_path, device),
                stopping=STOPPING,
            )
        return _runner


def warm_up(settings: Settings) -> None:
    """Build what a job needs before the first one arrives: the runner (torch, the database, the store), the default
    preset's backbone and, on a CPU, the choice of precision.

    Run in a thread of each new pool process (celery_app), so that a worker's first job, or a lost worker's job
    taken over, claims at once instead of after torch's import (seconds on a loaded machine) and starts its
    iterations on loaded weights. A failure here is logged and left for the first job to meet and report.
    """
    started = time.monotonic()
    try:
        job_runner(settings).warm_up()
        log.info("pool process ready for jobs in %.1f s (torch, the default backbone, the precision)", time.monotonic() - started)
    except Exception:
        log.warning("warming up the pool process failed; the first job builds what it needs", exc_info=True)
