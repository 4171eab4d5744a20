"""The story of one job on one worker: claim, run the engine, checkpoint, and finish or fail.

Each step is its own short transaction; none spans GPU time. The lease (worker name + heartbeat)
is renewed by every checkpoint and by a heartbeat thread, so a job whose worker dies is found by
the sweeper and resumed from its last saved state by another worker.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from PIL import Image, UnidentifiedImageError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared import fleet, jobs
from shared.db import session_scope
from shared.models import Job, JobStatus
from shared.params import TransferParams, resolve_params
from shared.settings import Settings
from shared.storage import Storage

from .engine import Backbone, Checkpoint, Control, TransferState, build_backbone, transfer
from .engine.weights import LoadedWeights, WeightsError, load_weights

log = logging.getLogger(__name__)
T = TypeVar("T")


class JobFailure(Exception):
    """A failure the user can act on: recorded with its code and message, not as a crash."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ModelCache:
    """Weights and backbones loaded once per worker process (after fork), kept across jobs."""

    model_dir: Any
    device: torch.device
    weights: dict[str, LoadedWeights] = field(default_factory=dict)
    backbones: dict[tuple[str, tuple[str, ...]], Backbone] = field(default_factory=dict)

    def backbone(self, params: TransferParams) -> Backbone:
        """Return the backbone for `params`, loading (and on first use fetching) its weights."""
        key = (params.weights, params.layers)
        if key not in self.backbones:
            if params.weights not in self.weights:
                self.weights[params.weights] = load_weights(params.weights, self.model_dir, pull=True)
            # One backbone per layer set is enough: a service sees few distinct presets.
            self.backbones[key] = build_backbone(self.weights[params.weights], params, self.device)
        return self.backbones[key]


class JobRunner:
    """Runs jobs for one worker process; `run` is what the Celery task calls."""

    def __init__(
        self, settings: Settings, session_factory: sessionmaker[Session], storage: Storage, *, worker: str, gpu: str,
        device: torch.device, models: ModelCache,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.storage = storage
        self.worker = worker
        self.gpu = gpu
        self.device = device
        self.models = models

    def _transaction(self, step: Callable[[Session], T], attempts: int = 8) -> T:
        """Run `step` in its own transaction, retrying while the database is briefly unreachable."""
        for attempt in range(attempts):
            try:
                with session_scope(self.session_factory) as session:
                    return step(session)
            except OperationalError:
                if attempt == attempts - 1:
                    raise
                log.warning("database unreachable, retrying in %s s", 2**attempt, exc_info=True)
                time.sleep(min(2**attempt, 30))
        raise AssertionError("unreachable")

    def run(self, job_id: str) -> str:
        """Claim and run the job; return what became of it ('succeeded', 'canceled', 'failed', 'skipped', 'lost')."""
        job = self._transaction(lambda s: self._claim(s, job_id))
        if job is None:
            return "skipped"  # another worker has it, or it ended, was canceled or deleted
        log.info("running job %s (attempt %d)", job_id, job.attempts)
        try:
            with self._heartbeat(job_id):
                outcome = self._run_claimed(job_id, job.params, job.content_sha256, job.style_sha256)
        except JobFailure as failure:
            self._finish(job_id, JobStatus.FAILED, failure.code, failure.message)
            outcome = "failed"
        except BaseException as error:
            # The one catch-all: record what happened for the user, then let Celery see the crash.
            code = "out_of_memory" if isinstance(error, torch.OutOfMemoryError) else "internal_error"
            message = (
                "the picture did not fit in the GPU's memory; submit it again with a smaller size"
                if code == "out_of_memory"
                else f"the worker failed: {type(error).__name__}: {error}"
            )
            log.error("job %s failed:\n%s", job_id, traceback.format_exc())
            try:
                self._finish(job_id, JobStatus.FAILED, code, message)
            except OperationalError:
                log.error("could not record the failure of job %s; the sweeper will retry it", job_id)
            raise
        finally:
            self._transaction(lambda s: fleet.worker_finished_job(s, self.node))
        return outcome

    @property
    def node(self) -> str:
        """Return the worker's name in the fleet (its lease id without the pid)."""
        return self.worker.split("/")[0]

    def _claim(self, session: Session, job_id: str) -> Job | None:
        job = jobs.claim_job(session, job_id, self.worker, self.gpu, self.settings.lease_seconds)
        if job is not None:
            fleet.worker_took_job(session, self.node, job_id, gpu=self.gpu)
        return job

    def _run_claimed(self, job_id: str, stored_params: dict[str, Any], content_sha256: str, style_sha256: str) -> str:
        try:
            params = resolve_params(stored_params)
        except ValueError as error:
            raise JobFailure("invalid_params", str(error)) from None
        content, style = self._open(content_sha256, "content"), self._open(style_sha256, "style")
        try:
            backbone = self.models.backbone(params)
        except WeightsError as error:
            raise JobFailure("weights_unavailable", str(error)) from None
        state = self._saved_state(job_id, params)
        checkpoints_seen = 0

        def on_checkpoint(checkpoint: Checkpoint) -> Control:
            nonlocal checkpoints_seen
            checkpoints_seen += 1
            # The first checkpoint shows a picture early; later ones every `preview_every`.
            save_preview = checkpoints_seen == 1 or checkpoints_seen % self.settings.preview_every == 0
            if save_preview:
                self.storage.write_job_file(job_id, "preview.jpg", _jpeg(checkpoint.preview()))
                self.storage.write_job_file(job_id, "state.pt", _state_bytes(checkpoint.state()))
            values = checkpoint.losses()
            go_on = self._transaction(lambda s: jobs.record_checkpoint(s, job_id, self.worker, values, has_preview=save_preview))
            return Control.CONTINUE if go_on else Control.STOP

        result = transfer(content, style, params, backbone=backbone, device=self.device, on_checkpoint=on_checkpoint, state=state)
        if result.canceled:
            ended = self._finish(job_id, JobStatus.CANCELED)
            return "canceled" if ended else "lost"
        buffer = io.BytesIO()
        result.image.save(buffer, format="PNG")
        self.storage.write_job_file(job_id, "result.png", buffer.getvalue())
        if not self._finish(job_id, JobStatus.SUCCEEDED):
            return "lost"
        self.storage.job_path(job_id, "state.pt").unlink(missing_ok=True)
        return "succeeded"

    def _finish(self, job_id: str, status: JobStatus, code: str | None = None, message: str | None = None) -> bool:
        return self._transaction(lambda s: jobs.finish_job(s, job_id, self.worker, status, error_code=code, error_message=message))

    def _open(self, sha256: str, role: str) -> Image.Image:
        path = self.storage.upload_path(sha256)
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise JobFailure("input_missing", f"the {role} image is no longer in storage; submit the job again") from None
        except (UnidentifiedImageError, OSError) as error:
            raise JobFailure("invalid_image", f"the {role} image cannot be read: {error}") from None

    def _saved_state(self, job_id: str, params: TransferParams) -> TransferState | None:
        path = self.storage.job_path(job_id, "state.pt")
        if not path.is_file():
            return None
        try:
            state = TransferState.from_dict(torch.load(path, map_location="cpu", weights_only=False))
        except Exception:  # a damaged state only costs the progress it held
            log.warning("ignoring unreadable saved state of job %s", job_id, exc_info=True)
            return None
        if state.params != params.to_dict():
            return None
        log.info("resuming job %s at iteration %d", job_id, state.iteration)
        return state

    @contextmanager
    def _heartbeat(self, job_id: str) -> Iterator[None]:
        """Renew the lease from a thread while the block runs, so slow steps (a weights download) keep it."""
        stop = threading.Event()
        interval = self.settings.lease_seconds / 4

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    with session_scope(self.session_factory) as session:
                        jobs.heartbeat(session, job_id, self.worker)
                except OperationalError:
                    log.warning("heartbeat of job %s failed", job_id, exc_info=True)

        thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _state_bytes(state: TransferState) -> bytes:
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    return buffer.getvalue()
