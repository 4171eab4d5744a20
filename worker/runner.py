"""The story of a job on a worker: claim it (and batch-mates), run the engine, checkpoint, and finish or fail.

Each step is its own short transaction; none spans GPU time. The lease (`Job.lease_owner`, this
process's id, and the heartbeat) is renewed by every checkpoint and by a heartbeat thread, so a job
whose worker dies is found by the sweeper and resumed from its last saved state by another worker.

A worker allowed batches (`Settings.batch_limit`, then the device's free memory) also claims queued
jobs whose parameters match its job's in all but the seed, and whose pictures come out the same
size, and optimises them together; each keeps its own checkpoints, previews, saved state, cancel and
record. The broker messages of jobs taken this way are skipped when they arrive, as the database says
they are running.
"""

from __future__ import annotations

import io
import logging
import threading
import math
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from PIL import Image, UnidentifiedImageError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared import fleet, jobs, leases
from shared.db import session_scope
from shared.models import Job, JobStatus
from shared.params import TransferParams, resolve_params
from shared.settings import Settings
from shared.storage import Storage

from .engine import (
    Backbone, Control, Progress, TargetCache, TransferJob, TransferResult, TransferState, batch_key, build_backbone,
    output_size, resolve_precision, transfer_batch,
)
from .engine.memory import batch_capacity, free_device_bytes
from .downloads import load_or_pull
from .engine.weights import LoadedWeights, WeightsError

log = logging.getLogger(__name__)
T = TypeVar("T")
# How often a worker waiting for batch-mates (`batch_wait_seconds`) looks for them again.
BATCH_POLL_SECONDS = 0.5


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
    # Style targets by upload hash: a service sees the same styles again and again.
    targets: TargetCache = field(default_factory=TargetCache)

    def backbone(self, params: TransferParams) -> Backbone:
        """Return the backbone for `params`, loading (and on first use fetching) its weights."""
        key = (params.weights, params.layers)
        if key not in self.backbones:
            if params.weights not in self.weights:
                self.weights[params.weights] = load_or_pull(params.weights, self.model_dir)
            # One backbone per layer set is enough: a service sees few distinct presets.
            self.backbones[key] = build_backbone(self.weights[params.weights], params, self.device)
        return self.backbones[key]


@dataclass
class _Member:
    """One job of a run on this worker: its inputs, the state it resumes from, and what became of it."""

    job_id: str
    params: TransferParams
    content: Image.Image
    style: Image.Image
    style_sha256: str
    state: TransferState | None
    checkpoints_seen: int = 0
    outcome: str | None = None
    # Checkpoints not yet in the database, and when it and the saved state were last written (monotonic seconds).
    unwritten: list[dict[str, Any]] = field(default_factory=list)
    written_at: float = field(default_factory=time.monotonic)
    saved_at: float = -math.inf

    def transfer_job(self) -> TransferJob:
        """Return the job as the engine takes it."""
        return TransferJob(self.content, self.style, self.params, self.state, style_key=self.style_sha256)


class _Leases:
    """The ids of the jobs a run holds and has not finished, shared with its heartbeat thread."""

    def __init__(self, job_id: str) -> None:
        self._ids = {job_id}
        self._lock = threading.Lock()
        self.taken = 1

    def add(self, job_id: str) -> None:
        """Count a job just claimed."""
        with self._lock:
            self._ids.add(job_id)
            self.taken += 1

    def drop(self, job_id: str) -> None:
        """Forget a job just finished."""
        with self._lock:
            self._ids.discard(job_id)

    def ids(self) -> list[str]:
        """Return the held ids."""
        with self._lock:
            return sorted(self._ids)


class JobRunner:
    """Runs jobs for one worker process; `run` is what the Celery task calls."""

    def __init__(
        self, settings: Settings, session_factory: sessionmaker[Session], storage: Storage, *, name: str, lease_owner: str,
        gpu: str, device: torch.device, models: ModelCache,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.storage = storage
        # The worker's name in the fleet, and the id its leases on jobs carry (the name and this process's pid).
        self.name = name
        self.lease_owner = lease_owner
        # This machine, as the launcher's worker names carry it (`gpu0@host`): a lease of a dead process named
        # for this host is released at once. Workers named otherwise wait out the lease.
        self.host = socket.gethostname()
        self.gpu = gpu
        self.device = device
        self.models = models
        # The batch sizes that ran out of memory here, by output size and precision: later batches stay below.
        self.batch_ceilings: dict[tuple[tuple[int, int], str], int] = {}

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
        """Claim and run the job, with any batch-mates; return what became of it ('succeeded', 'canceled', 'failed', 'skipped', 'lost')."""
        job = self._transaction(lambda s: self._claim(s, job_id))
        if job is None:
            return "skipped"  # another worker has it, or it ended, was canceled, deleted or taken into a batch
        log.info("running job %s (attempt %d)", job_id, job.attempts)
        held = _Leases(job_id)
        try:
            with self._heartbeat(held):
                outcome = self._run_claimed(job, held)
        except JobFailure as failure:
            # Only the job itself is held yet: its failures come before any batch-mate is claimed.
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
            for held_id in held.ids():
                try:
                    self._finish(held_id, JobStatus.FAILED, code, message)
                except OperationalError:
                    log.error("could not record the failure of job %s; the sweeper will retry it", held_id)
            raise
        finally:
            self._transaction(lambda s: fleet.worker_finished_job(s, self.name, count=held.taken))
        return outcome

    def _claim(self, session: Session, job_id: str) -> Job | None:
        # A pool process killed on this machine leaves its lease fresh for up to `lease_seconds`; its parent
        # sends the job again at once, and this process can see that the holder is gone.
        dead = dead_local_owners(leases.local_lease_owners(session, self.host), self.host)
        job = leases.claim_job(session, job_id, self.lease_owner, self.gpu, self.settings.lease_seconds, dead_owners=dead)
        if job is not None:
            fleet.worker_took_job(session, self.name, job_id, gpu=self.gpu)
        return job

    def _run_claimed(self, job: Job, held: _Leases) -> str:
        leader = self._prepare(job)
        try:
            backbone = self.models.backbone(leader.params)
        except WeightsError as error:
            raise JobFailure("weights_unavailable", str(error)) from None
        batch = [leader, *self._take_mates(leader, held)]
        if len(batch) > 1:
            self._record_batch(batch)
        self._optimise(batch, backbone, held)
        for mate in batch[1:]:
            log.info("batch-mate %s of job %s %s", mate.job_id, leader.job_id, mate.outcome)
        return leader.outcome or "lost"

    def _prepare(self, job: Job) -> _Member:
        """Read a claimed job's parameters, pictures and saved state, or raise the JobFailure that ends it."""
        try:
            params = resolve_params(job.params)
        except ValueError as error:
            raise JobFailure("invalid_params", str(error)) from None
        content, style = self._open(job.content_sha256, "content"), self._open(job.style_sha256, "style")
        return _Member(job.id, params, content, style, job.style_sha256, self._saved_state(job.id, params))

    def _take_mates(self, leader: _Member, held: _Leases) -> list[_Member]:
        """Claim queued jobs that can share the leader's batch, waiting up to `batch_wait_seconds` for more."""
        size = output_size(leader.params, leader.content)
        room = self._batch_capacity(leader.params, size) - 1
        deadline = time.monotonic() + self.settings.batch_wait_seconds
        mates: list[_Member] = []
        while room > 0:
            for job in self._claim_mates(leader.params, size, room):
                held.add(job.id)
                try:
                    mates.append(self._prepare(job))
                    room -= 1
                except JobFailure as failure:
                    # A batch-mate's own trouble ends it alone; the batch goes on without it.
                    self._finish(job.id, JobStatus.FAILED, failure.code, failure.message)
                    held.drop(job.id)
            left = deadline - time.monotonic()
            if room <= 0 or left <= 0:
                break
            time.sleep(min(BATCH_POLL_SECONDS, left))
        return mates

    def _batch_capacity(self, params: TransferParams, size: tuple[int, int]) -> int:
        """Return how many jobs of `params` and output `size` to optimise at once here."""
        limit = self.settings.batch_limit(gpu=self.device.type == "cuda")
        if limit <= 1:
            return 1
        precision = resolve_precision(params.precision, self.device)
        limit = min(limit, self.batch_ceilings.get((size, precision), limit))
        if self.device.type == "cuda":
            # Blocks the allocator keeps cached are free for a batch, but the driver counts them as used.
            torch.cuda.empty_cache()
        return batch_capacity(size[0], size[1], precision, limit=limit, free_bytes=free_device_bytes(self.device))

    def _claim_mates(self, params: TransferParams, size: tuple[int, int], room: int) -> list[Job]:
        candidates = self._transaction(lambda s: leases.batch_candidates(s))
        key = batch_key(params)
        chosen = [job.id for job in candidates if self._fits(job, key, size)][:room]
        if not chosen:
            return []
        return self._transaction(lambda s: leases.claim_batch_mates(s, chosen, self.lease_owner, self.gpu))

    def _fits(self, job: Job, key: dict[str, Any], size: tuple[int, int]) -> bool:
        """Tell whether a queued job can join a batch of parameters `key` and output `size`."""
        try:
            params = resolve_params(job.params)
        except ValueError:
            return False  # its own run records why
        if batch_key(params) != key:
            return False
        if isinstance(params.size, tuple):
            return params.size == size
        # A long-side size gives each picture the shape of its content: read that from the upload's header.
        try:
            with Image.open(self.storage.upload_path(job.content_sha256)) as content:
                return output_size(params, content) == size
        except (UnidentifiedImageError, OSError):
            return False  # its own run records why

    def _record_batch(self, batch: list[_Member]) -> None:
        ids = [member.job_id for member in batch]
        self._transaction(lambda s: leases.record_batch(s, ids, self.lease_owner, jobs.new_job_id() if len(ids) > 1 else None))
        if len(ids) > 1:
            log.info("running %d jobs as one batch: %s", len(ids), ", ".join(ids))

    def _optimise(self, batch: list[_Member], backbone: Backbone, held: _Leases) -> None:
        """Run the batch's jobs to their end; a batch that runs out of memory goes on in halves, each from its saved state."""
        try:
            results = transfer_batch(
                [member.transfer_job() for member in batch], backbone=backbone, device=self.device,
                on_checkpoint=lambda index, checkpoint: self._checkpoint(batch[index], checkpoint, held),
                target_cache=self.models.targets,
            )
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            log.warning("a batch of %d jobs ran out of memory; going on in halves", len(batch), exc_info=True)
        else:
            for member, result in zip(batch, results):
                if member.outcome is None:
                    self._succeed(member, result, held)
            return
        # Here, past the handler, the failed attempt's tensors are free.
        size = output_size(batch[0].params, batch[0].content)
        self.batch_ceilings[(size, resolve_precision(batch[0].params.precision, self.device))] = max(1, len(batch) // 2)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        going = [member for member in batch if member.outcome is None]
        half = (len(going) + 1) // 2
        for part in (going[:half], going[half:]):
            if part:
                for member in part:
                    member.state = self._saved_state(member.job_id, member.params)
                self._record_batch(part)
                self._optimise(part, backbone, held)

    def _checkpoint(self, member: _Member, checkpoint: Progress, held: _Leases) -> Control:
        member.checkpoints_seen += 1
        now = time.monotonic()
        # The first checkpoint shows a picture early; later ones every `preview_every`, time allowing.
        save_preview = member.checkpoints_seen == 1 or (
            member.checkpoints_seen % self.settings.preview_every == 0 and now - member.saved_at >= self.settings.preview_min_seconds
        )
        if save_preview:
            self.storage.write_job_file(member.job_id, "preview.jpg", _jpeg(checkpoint.preview()))
            self.storage.write_job_file(member.job_id, "state.pt", _state_bytes(checkpoint.state()))
            member.saved_at = now
        member.unwritten.append(checkpoint.losses())
        # Rows never lag a saved state (a resumed run starts from its iteration) nor the job's end.
        last = checkpoint.iteration >= member.params.iterations
        if not (save_preview or last or now - member.written_at >= self.settings.checkpoint_flush_seconds):
            return Control.CONTINUE
        unwritten, member.unwritten, member.written_at = member.unwritten, [], now
        if self._transaction(lambda s: leases.record_checkpoints(s, member.job_id, self.lease_owner, unwritten, has_preview=save_preview)):
            return Control.CONTINUE
        # Canceled, deleted or taken over: the job leaves the batch now, and its record says so at once.
        member.outcome = "canceled" if self._finish(member.job_id, JobStatus.CANCELED) else "lost"
        held.drop(member.job_id)
        return Control.STOP

    def _succeed(self, member: _Member, result: TransferResult, held: _Leases) -> None:
        buffer = io.BytesIO()
        result.image.save(buffer, format="PNG")
        self.storage.write_job_file(member.job_id, "result.png", buffer.getvalue())
        ended = self._finish(member.job_id, JobStatus.SUCCEEDED)
        held.drop(member.job_id)
        if ended:
            self.storage.job_path(member.job_id, "state.pt").unlink(missing_ok=True)
        member.outcome = "succeeded" if ended else "lost"

    def _finish(self, job_id: str, status: JobStatus, code: str | None = None, message: str | None = None) -> bool:
        return self._transaction(lambda s: leases.finish_job(s, job_id, self.lease_owner, status, error_code=code, error_message=message))

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
            state = TransferState.from_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception:  # a damaged state only costs the progress it held
            log.warning("ignoring unreadable saved state of job %s", job_id, exc_info=True)
            return None
        if state.params != params.to_dict():
            return None
        log.info("resuming job %s at iteration %d", job_id, state.iteration)
        return state

    @contextmanager
    def _heartbeat(self, held: _Leases) -> Iterator[None]:
        """Renew the leases from a thread while the block runs, so slow steps (a weights download) keep them."""
        stop = threading.Event()
        interval = self.settings.lease_seconds / 4

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    with session_scope(self.session_factory) as session:
                        for job_id in held.ids():
                            leases.heartbeat(session, job_id, self.lease_owner)
                except OperationalError:
                    log.warning("heartbeat of jobs %s failed", ", ".join(held.ids()), exc_info=True)

        thread = threading.Thread(target=beat, name=f"heartbeat-{held.ids()[0]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def process_alive(pid: int) -> bool:
    """Tell whether a process with this id runs on this machine (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs, as another user
    return True


def dead_local_owners(owners: Sequence[str], host: str) -> list[str]:
    """Return those of `owners` (`name@host/pid`) that name this `host` and a process that no longer runs."""
    dead = []
    for owner in owners:
        pid = owner.rpartition("/")[2]
        if leases.lease_owner_host(owner) == host and pid.isdigit() and not process_alive(int(pid)):
            dead.append(owner)
    return dead


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _state_bytes(state: TransferState) -> bytes:
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    return buffer.getvalue()
