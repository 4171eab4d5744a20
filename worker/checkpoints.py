"""A job's checkpoints on a worker: when to write their rows and save a picture and state (the policy), and the
thread that encodes and writes those files while the optimisation goes on (the writer).

A checkpoint's preview and state are copied off the device in the loop, then encoded and written by a thread of
their own (on an H100 the service's work inside the loop, these writes with it, was 3.9 % of a 600x900 job; a 20 MB
state's write and fsync took 140 ms on a development machine's disk). A job has at most one such write in flight;
the database learns of a saved state only once it is on disk.
"""

from __future__ import annotations

import io
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from PIL import Image

from styleq.shared.adapters import logs
from styleq.shared.adapters.settings import Settings
from styleq.shared.adapters.storage import Store

from .engine import Progress, TransferState
from .metrics import WorkerMetrics

log = logging.getLogger(__name__)


@dataclass
class CheckpointLog:
    """One job's checkpoints in this run: how many were seen, which rows wait to be written, and when it last wrote and saved."""

    seen: int = 0
    unwritten: list[dict[str, Any]] = field(default_factory=list)
    # Monotonic seconds of the last rows written and the last picture and state saved.
    written_at: float = field(default_factory=time.monotonic)
    saved_at: float = -math.inf

    def add(self, checkpoint: Progress, settings: Settings, *, now: float, stopping: bool, last: bool) -> tuple[bool, bool]:
        """Count a checkpoint; return whether to save its picture and state, and whether to write the rows now.

        The first checkpoint shows a picture early; later ones every `preview_every`, time allowing; and a worker told
        to stop saves where it is, so the job resumes there elsewhere. Rows never lag a saved state (a resumed run
        starts from its iteration) nor the job's end, and wait at most `checkpoint_flush_seconds`.
        """
        self.seen += 1
        save = (
            (stopping and not last)
            or self.seen == 1
            or (self.seen % settings.preview_every == 0 and now - self.saved_at >= settings.preview_min_seconds)
        )
        self.unwritten.append(checkpoint.losses())
        return save, save or last or now - self.written_at >= settings.checkpoint_flush_seconds

    def take_rows(self, now: float) -> list[dict[str, Any]]:
        """Return the rows not yet written, as written now."""
        rows, self.unwritten, self.written_at = self.unwritten, [], now
        return rows


@dataclass
class SavedFiles:
    """One job's preview and state: the write in flight, if any, and the iteration of the last state on disk."""

    job_id: str
    # Set by the writer's thread: the database learns it at the job's next write.
    saved_iteration: int | None = None
    writing: Future[None] | None = None


class CheckpointWriter:
    """Encodes and writes checkpoints' previews and states on a thread of its own, one job's writes in order."""

    def __init__(self, storage: Store, metrics: WorkerMetrics, device: torch.device) -> None:
        self.storage = storage
        self.metrics = metrics
        self.device = device
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-files")

    def submit(self, files: SavedFiles, iteration: int, preview: Image.Image, state: TransferState) -> None:
        """Write a preview and state later, in the caller's log context (wait for the job's write before: `wait`)."""
        files.writing = self.executor.submit(logs.in_this_context(partial(self._write, files, iteration, preview, state)))

    def wait(self, files: SavedFiles) -> None:
        """Wait until the job's preview and state being written, if any, are on disk (or failed to be: logged)."""
        writing, files.writing = files.writing, None
        if writing is None:
            return
        try:
            writing.result()
        except Exception:  # a preview that cannot be encoded only costs the preview
            log.warning("could not write the preview or state of job %s", files.job_id, exc_info=True)

    def _write(self, files: SavedFiles, iteration: int, preview: Image.Image, state: TransferState) -> None:
        """Encode and write a preview and a saved state; failing to is logged, and the job goes on (it only costs progress on a crash)."""
        started = time.monotonic()
        try:
            self.storage.write_job_file(files.job_id, "preview.jpg", _jpeg(preview), create=False)
            if self.storage.save_state(files.job_id, iteration, _state_bytes(state)):
                files.saved_iteration = iteration
                self.metrics.record_checkpoint_write(time.monotonic() - started, with_state=True, device=self.device)
        except FileNotFoundError:
            log.info("job %s was deleted; its files are not written", files.job_id)
        except OSError:
            log.warning("could not write the preview or state of job %s at iteration %d; going on", files.job_id, iteration, exc_info=True)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _state_bytes(state: TransferState) -> bytes:
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    return buffer.getvalue()
