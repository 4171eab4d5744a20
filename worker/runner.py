"""The story of a job on a worker: claim it (and batch-mates), run the engine, checkpoint, and finish or fail.

Each step is its own short transaction; none spans GPU time. The lease (`Job.lease_owner`, this
process's id, and the heartbeat) is renewed by every checkpoint and by a heartbeat thread, so a job
whose worker dies is found by the sweeper and resumed from its last saved state by another worker.

A worker allowed batches (`Settings.batch_limit`, then the device's free memory) also claims queued
jobs whose parameters match its job's in all but the seed, and whose pictures come out the same
size, and optimises them together; each keeps its own checkpoints, previews, saved state, cancel and
record. The broker messages of jobs taken this way are skipped when they arrive, as the database says
they are running.

Faults, and what a run does about them:
- the worker is told to stop (`stopping`, set on SIGTERM): each job saves its state at its next
  checkpoint, goes back to the queue and is sent again, so another worker resumes it at once;
- the database is unreachable through `Settings.database_retry_delays` (about a minute): the run stops without
  recording anything; the job keeps its lease until the sweeper finds it stale and resumes it;
- a preview or a state cannot be written: logged, and the run goes on; a result cannot be written:
  retried (`Settings.result_write_retry_delays`), then the job goes back to the queue (and fails after `max_attempts` such tries);
- files are written only after the checkpoint's database write confirms the lease, so a canceled,
  deleted or taken-over job gets no late files;
- the store (an object store) does not answer through `Settings.storage_retry_delays`: a claim is left
  for the sweeper to send again, a job whose inputs or state cannot be read goes back to the queue, and a
  finished job whose result cannot be written goes back to it too, none of them counted as a failed attempt
  (the store's outage is not the job's fault); previews and states missed meanwhile only cost progress.

The runner is the story; its parts live beside it: `batching` (which jobs join a batch, batch and pass sizes),
`checkpoints` (when to write rows and save files, and the thread that writes them), `model_cache` (weights and
networks kept across jobs) and `retries` (the one retry loop). A job is finished, handed back or resumed only
after its checkpoint files are written.
"""

from __future__ import annotations

import contextlib
import enum
import io
import logging
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import torch
from PIL import Image
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from styleq.shared.adapters import logs
from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.images import decode_image
from styleq.shared.adapters.models import Job, JobStatus
from styleq.shared.adapters.outputs import FORMATS, encode_result
from styleq.shared.adapters.settings import Settings
from styleq.shared.adapters.storage import Store, StoreUnreachable
from styleq.shared.domain.errors import InvalidImage
from styleq.shared.domain.params import TransferParams, installed_weights, resolve_params, style_roles
from styleq.shared.service import fleet, jobs, leases

from .batching import BatchPlanner
from .checkpoints import CheckpointLog, CheckpointWriter, SavedFiles
from .engine import (
    Backbone,
    Control,
    Progress,
    TransferJob,
    TransferResult,
    TransferState,
    output_size,
    resolve_precision,
    transfer_batch,
)
from .engine.weights import WeightsError
from .liveness import dead_local_owners
from .metrics import WorkerMetrics
from .model_cache import ModelCache
from .retries import DatabaseDown, ResultNotWritten, StoreDown, retrying

log = logging.getLogger(__name__)
T = TypeVar("T")
# How often a worker waiting for batch-mates (`batch_wait_seconds`) looks for them again.
BATCH_POLL_SECONDS = 0.5
STORAGE_FAILURE_MESSAGE = "the service could not store this job's files; it was tried again and then given up"


class RunOutcome(enum.StrEnum):
    """What became of a job a worker was given: the Celery task's result, and a batch-mate's log line."""

    SUCCEEDED = "succeeded"
    CANCELED = "canceled"
    FAILED = "failed"
    # Another worker has it, or it ended, was canceled, deleted or taken into a batch: nothing was run.
    SKIPPED = "skipped"
    # Taken over by another worker meanwhile (this one's lease went stale).
    LOST = "lost"
    # Back in the queue: the worker is stopping, or the store failed.
    HANDED_BACK = "handed_back"
    # The database or the store went away mid-run; the sweeper resumes the job when they are back.
    INTERRUPTED = "interrupted"


class JobFailure(Exception):
    """A failure the user can act on: recorded with its code and message, not as a crash."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Member:
    """One job of a run on this worker: its inputs, the state it resumes from, and what became of it."""

    job_id: str
    params: TransferParams
    content: Image.Image
    # The style pictures in the order given (several for a blend), and their uploads' hashes.
    styles: list[Image.Image]
    style_hashes: list[str]
    state: TransferState | None
    attempt: int
    outcome: RunOutcome | None = None
    checkpoints: CheckpointLog = field(default_factory=CheckpointLog)
    # Its preview and state: the write in flight, and the last state on disk (the database learns it at its next write).
    files: SavedFiles = field(init=False)
    # The iteration up to which this run's work is counted in the worker's metrics (a resumed run starts at its state's).
    counted_iteration: int = 0

    def __post_init__(self) -> None:
        self.files = SavedFiles(self.job_id)

    def transfer_job(self) -> TransferJob:
        """Return the job as the engine takes it."""
        return TransferJob(self.content, self.styles, self.params, self.state, style_keys=self.style_hashes)

    def log_context(self) -> AbstractContextManager[None]:
        """Return a context in which log lines name this job and its attempt (a batch-mate's, not the leader's)."""
        return logs.log_context(job_id=self.job_id, attempt=self.attempt)


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
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        storage: Store,
        *,
        name: str,
        lease_owner: str,
        gpu: str,
        device: torch.device,
        models: ModelCache,
        stopping: threading.Event | None = None,
        metrics: WorkerMetrics | None = None,
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
        self.batching = BatchPlanner(settings, storage, device, self._transaction)
        # Set when the worker is told to stop: running jobs go back to the queue at their next checkpoint.
        self.stopping = stopping or threading.Event()
        self.metrics = metrics or WorkerMetrics(name, gpu)
        self._resend: Callable[[str], None] | None = None
        # Encodes and writes checkpoints' previews and states off the optimisation loop's thread.
        self.files = CheckpointWriter(storage, self.metrics, device)

    def warm_up(self) -> None:
        """Load the default preset's backbone and choose its precision, as its first job would (see process.warm_up)."""
        params = resolve_params()
        if params.weights in installed_weights(self.settings.models_path):
            self.models.backbone(params)
        resolve_precision(params.precision, self.device)

    def _transaction(self, step: Callable[[Session], T], delays: Sequence[float] | None = None) -> T:
        """Run `step` in its own transaction, retrying while the database is briefly unreachable; DatabaseDown after.

        The waits between tries are `delays`, else the settings' `database_retry_delays`.
        """

        def in_session() -> T:
            with session_scope(self.session_factory) as session:
                return step(session)

        waits = self.settings.database_retry_delays if delays is None else delays
        return retrying(in_session, waits, OperationalError, DatabaseDown, "the database is unreachable")

    def _from_store(self, step: Callable[[], T]) -> T:
        """Run a step that reads or writes the store, retrying while it does not answer; StoreDown after `storage_retry_delays`."""
        return retrying(step, self.settings.storage_retry_delays, StoreUnreachable, StoreDown, "the store does not answer")

    def run(self, job_id: str, resend: Callable[[str], None] | None = None) -> RunOutcome:
        """Claim and run the job, with any batch-mates; return what became of it (`RunOutcome`).

        `resend` sends a job's message to the broker again, for jobs handed back. Every line logged meanwhile
        carries the job's id and this worker's name, and once it is claimed, the attempt.
        """
        with logs.log_context(job_id=job_id, worker=self.name):
            return self._run(job_id, resend)

    def _run(self, job_id: str, resend: Callable[[str], None] | None) -> RunOutcome:
        self._resend = resend
        if self.stopping.is_set():
            self._send_again(job_id)  # this message arrived as the worker stops: another worker takes it
            return RunOutcome.HANDED_BACK
        try:
            job, gave_up = self._from_store(lambda: self._transaction(lambda s: self._claim(s, job_id)))
        except StoreDown:
            # The claim was rolled back with its failed marker write: the job is queued, and the sweeper sends it again.
            log.error("the store is unreachable; leaving job %s queued for the sweeper to send again", job_id, exc_info=True)
            return RunOutcome.INTERRUPTED
        if gave_up:
            self._remove_states(job_id)
            return RunOutcome.FAILED
        if job is None:
            return RunOutcome.SKIPPED  # another worker has it, or it ended, was canceled, deleted or taken into a batch
        with logs.log_context(attempt=job.attempts):
            return self._run_and_record(job)

    def _run_and_record(self, job: Job) -> RunOutcome:
        """Run a claimed job and record its end, however it ends."""
        job_id = job.id
        log.info("running job %s (attempt %d)", job_id, job.attempts)
        held = _Leases(job_id)
        try:
            with self._heartbeat(held):
                outcome = self._run_claimed(job, held)
        except JobFailure as failure:
            # Only the job itself is held yet: its failures come before any batch-mate is claimed.
            self._finish(job_id, JobStatus.FAILED, failure.code, failure.message)
            outcome = RunOutcome.FAILED
        except StoreDown:
            # Inputs or a state that cannot be read: back to the queue, uncounted; the sweeper sends them when it next runs.
            log.error("the store is unreachable; handing jobs %s back to the queue", ", ".join(held.ids()), exc_info=True)
            for held_id in held.ids():
                try:
                    self._transaction(partial(leases.release_job, job_id=held_id, lease_owner=self.lease_owner))
                except DatabaseDown:
                    log.error("could not hand job %s back; the sweeper will find its lease stale", held_id)
            return RunOutcome.HANDED_BACK
        except DatabaseDown:
            # Nothing can be recorded now; the leases go stale and the sweeper resumes the jobs from their saved states.
            log.error("the database is unreachable; leaving jobs %s to be resumed when it is back", ", ".join(held.ids()), exc_info=True)
            return RunOutcome.INTERRUPTED
        except BaseException as error:
            # The one catch-all: record a plain account for the user, the detail for the operator, then let Celery see the crash.
            code = "out_of_memory" if isinstance(error, torch.OutOfMemoryError) else "internal_error"
            message = (
                "the picture did not fit in the GPU's memory; submit it again with a smaller size"
                if code == "out_of_memory"
                else f"the worker failed unexpectedly ({type(error).__name__}); the operators have the details in the worker's log"
            )
            log.error("job %s failed:\n%s", job_id, traceback.format_exc())
            for held_id in held.ids():
                try:
                    self._finish(held_id, JobStatus.FAILED, code, message)
                except DatabaseDown:
                    log.error("could not record the failure of job %s; the sweeper will retry it", held_id)
            raise
        finally:
            try:
                self._transaction(lambda s: fleet.worker_finished_job(s, self.name, count=held.taken), delays=())
            except DatabaseDown:
                log.warning("could not record in the fleet that job %s ended", job_id)
        return outcome

    def _claim(self, session: Session, job_id: str) -> tuple[Job | None, bool]:
        """Lease the job if it is free; return it (None if someone else has it) and whether it was given up instead.

        A lost lease whose attempt was the last allowed to end without progress fails the job rather than run it again.
        """
        # A pool process killed on this machine leaves its lease fresh for up to `lease_seconds`; its parent
        # sends the job again at once, and this process can see that the holder is gone.
        dead = dead_local_owners(leases.local_lease_owners(session, self.host), self.host)
        settings = self.settings
        if leases.give_up_stalled(session, job_id, settings.lease_seconds, settings.max_attempts, dead_owners=dead):
            return None, True
        job = leases.claim_job(session, job_id, self.lease_owner, self.gpu, settings.lease_seconds, dead_owners=dead)
        if job is not None:
            fleet.worker_took_job(session, self.name, job_id, gpu=self.gpu)
            # The folder is made once the claim holds; later writes never make it again, so a deleted job stays gone.
            self.storage.make_job_dir(job_id)
        return job, False

    def _send_again(self, job_id: str) -> None:
        """Send a job handed back to the broker (when this worker cannot, the sweeper sends it, as it is marked unsent)."""
        if self._resend is not None:
            resend = self._resend
            try:
                self._transaction(lambda s: jobs.enqueue_job(s, resend, job_id), delays=())
            except DatabaseDown:
                log.warning("job %s is back in the queue; the sweeper will send it", job_id)

    def _run_claimed(self, job: Job, held: _Leases) -> RunOutcome:
        leader = self._prepare(job)
        try:
            backbone = self.models.backbone(leader.params)
        except WeightsError as error:
            log.error("job %s: weights %s cannot be loaded: %s", job.id, leader.params.weights, error)
            raise JobFailure(
                "weights_unavailable",
                f"the weights {leader.params.weights!r} are missing or damaged on the worker that took this job; an operator "
                f"installs them with `styleq weights pull {leader.params.weights}`",
            ) from None
        batch = [leader, *self._take_mates(leader, held)]
        if len(batch) > 1:
            self._record_batch(batch)
        try:
            self._optimise(batch, backbone, held)
        finally:
            # A run that ends in an exception may still be writing: its files must be down before the job fails or is resumed.
            for member in batch:
                self.files.wait(member.files)
        for mate in batch[1:]:
            log.info("batch-mate %s of job %s %s", mate.job_id, leader.job_id, mate.outcome)
        return leader.outcome or RunOutcome.LOST

    def _prepare(self, job: Job) -> _Member:
        """Read a claimed job's parameters, pictures and saved state, or raise the JobFailure that ends it."""
        try:
            params = resolve_params(job.params)
        except ValueError as error:
            raise JobFailure("invalid_params", str(error)) from None
        hashes = job.style_hashes
        try:
            params.check_style_count(len(hashes))
        except ValueError as error:
            raise JobFailure("invalid_params", str(error)) from None
        content = self._open(job.content_sha256, "content")
        styles = [self._open(sha, role) for sha, role in zip(hashes, style_roles(len(hashes)))]
        try:
            # The API refuses such a size at submit; a job queued before it did is told why, not given torch's words.
            params.check_output_size(*content.size)
        except ValueError as error:
            raise JobFailure("invalid_params", str(error)) from None
        # The API writes out an automatic schedule at submit; a job stored otherwise gets it here.
        params = params.with_schedule(*content.size)
        state = self._saved_state(job.id, params)
        if state is not None and state.iteration != job.resumed_iteration:
            # The job's `resumed_from` names the state this attempt resumes from, not the last one the database heard of.
            self._transaction(lambda s: leases.record_resumed(s, job.id, self.lease_owner, state.iteration))
        return _Member(job.id, params, content, styles, hashes, state, job.attempts, counted_iteration=state.iteration if state else 0)

    def _take_mates(self, leader: _Member, held: _Leases) -> list[_Member]:
        """Claim queued jobs that can share the leader's batch, waiting up to `batch_wait_seconds` for more."""
        size = output_size(leader.params, leader.content)
        room = self.batching.capacity(leader.params, size) - 1
        deadline = time.monotonic() + self.settings.batch_wait_seconds
        mates: list[_Member] = []
        while room > 0:
            for job in self.batching.claim_mates(leader.params, size, room, self.lease_owner, self.gpu):
                held.add(job.id)
                with logs.log_context(job_id=job.id, attempt=job.attempts):
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

    def _record_batch(self, batch: list[_Member]) -> None:
        ids = [member.job_id for member in batch]
        self._transaction(lambda s: leases.record_batch(s, ids, self.lease_owner, jobs.new_job_id() if len(ids) > 1 else None))
        if len(ids) > 1:
            log.info("running %d jobs as one batch: %s", len(ids), ", ".join(ids))

    def _optimise(self, batch: list[_Member], backbone: Backbone, held: _Leases) -> None:
        """Run the batch's jobs to their end; a batch that runs out of memory goes on in halves, each from its saved state."""
        size = output_size(batch[0].params, batch[0].content)
        try:
            results = transfer_batch(
                [member.transfer_job() for member in batch],
                backbone=backbone,
                device=self.device,
                on_checkpoint=lambda index, checkpoint: self._checkpoint(batch[index], checkpoint, held),
                target_cache=self.models.targets,
                max_pass_pixels=self.batching.pass_pixels(batch[0].params, size),
            )
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            log.warning("a batch of %d jobs ran out of memory; going on in halves", len(batch), exc_info=True)
        else:
            for member, result in zip(batch, results):
                if member.outcome is None:
                    with member.log_context():
                        self._succeed(member, result, held)
            return
        # Here, past the handler, the failed attempt's tensors are free.
        self.batching.ran_out_of_memory(batch[0].params, size, len(batch))
        going = [member for member in batch if member.outcome is None]
        half = (len(going) + 1) // 2
        for part in (going[:half], going[half:]):
            if part:
                for member in part:
                    with member.log_context():
                        self.files.wait(member.files)
                        member.state = self._saved_state(member.job_id, member.params)
                self._record_batch(part)
                self._optimise(part, backbone, held)

    def _checkpoint(self, member: _Member, checkpoint: Progress, held: _Leases) -> Control:
        with member.log_context():
            return self._record_checkpoint(member, checkpoint, held)

    def _record_checkpoint(self, member: _Member, checkpoint: Progress, held: _Leases) -> Control:
        self.metrics.count_iterations(checkpoint.iteration - member.counted_iteration)
        member.counted_iteration = checkpoint.iteration
        now = time.monotonic()
        stopping = self.stopping.is_set()
        last = checkpoint.iteration >= member.params.iterations
        save, write = member.checkpoints.add(checkpoint, self.settings, now=now, stopping=stopping, last=last)
        if not write:
            return Control.CONTINUE
        if save or last:
            # One write in flight a job, in order; the record then names the state on disk (at the last, the one the job leaves).
            self.files.wait(member.files)
        # The picture and state as they are at this checkpoint, copied off the device; encoded and written later.
        files = (checkpoint.preview(), checkpoint.state()) if save else None
        unwritten = member.checkpoints.take_rows(now)
        held_still = self._transaction(
            lambda s: leases.record_checkpoints(
                s,
                member.job_id,
                self.lease_owner,
                unwritten,
                has_preview=save,
                saved_iteration=member.files.saved_iteration,
                checkpoint_event_seconds=self.settings.webhook_checkpoint_seconds,
            )
        )
        if not held_still:
            # Canceled, deleted or taken over: the job leaves the batch now, and its record says so at once.
            self.files.wait(member.files)
            member.outcome = RunOutcome.CANCELED if self._finish(member.job_id, JobStatus.CANCELED) else RunOutcome.LOST
            held.drop(member.job_id)
            return Control.STOP
        if files is not None:
            # Only now, with the lease confirmed, do the files change.
            self.files.submit(member.files, checkpoint.iteration, *files)
            member.checkpoints.saved_at = now
        self.metrics.record_checkpoint_write(time.monotonic() - now, with_state=False, device=self.device)
        if stopping and not last:
            self._hand_back(member, held)
            return Control.STOP
        return Control.CONTINUE

    def _hand_back(self, member: _Member, held: _Leases, *, failed_write: bool = False) -> None:
        """Put a held job back in the queue and send it again; after a failed result write this counts as an attempt."""
        self.files.wait(member.files)  # the state it resumes from
        # The database hears of the state just written here: the next attempt resumes from it, and says so.
        status = self._transaction(
            lambda s: leases.release_job(
                s,
                member.job_id,
                self.lease_owner,
                failed=failed_write,
                max_attempts=self.settings.max_attempts,
                error_code="storage_error",
                error_message=STORAGE_FAILURE_MESSAGE,
                saved_iteration=member.files.saved_iteration,
            )
        )
        held.drop(member.job_id)
        if status is JobStatus.QUEUED:
            log.info("job %s handed back to the queue at iteration %s", member.job_id, member.files.saved_iteration)
            member.outcome = RunOutcome.HANDED_BACK
            self._send_again(member.job_id)
        elif status is JobStatus.FAILED:
            self._remove_states(member.job_id)
            member.outcome = RunOutcome.FAILED
        else:
            member.outcome = RunOutcome.LOST

    def _succeed(self, member: _Member, result: TransferResult, held: _Leases) -> None:
        self.files.wait(member.files)  # before its states are removed, so none comes back after
        data = encode_result(result.image, member.params, precision=resolve_precision(member.params.precision, self.device))

        def write_result() -> None:
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile: the record below says so
                self._from_store(
                    lambda: self.storage.write_job_file(member.job_id, FORMATS[member.params.format].file_name, data, create=False)
                )

        try:
            retrying(
                write_result,
                self.settings.result_write_retry_delays,
                OSError,
                ResultNotWritten,
                f"could not write the result of job {member.job_id}",
            )
        except StoreDown:
            log.warning("the store is unreachable; job %s goes back to the queue to finish once it answers", member.job_id)
            self._hand_back(member, held)
            return
        except ResultNotWritten:
            log.warning("could not write the result of job %s; it goes back to the queue", member.job_id, exc_info=True)
            self._hand_back(member, held, failed_write=True)
            return
        ended = self._finish(member.job_id, JobStatus.SUCCEEDED)
        held.drop(member.job_id)
        member.outcome = RunOutcome.SUCCEEDED if ended else RunOutcome.LOST

    def _finish(self, job_id: str, status: JobStatus, code: str | None = None, message: str | None = None) -> bool:
        """Record the job's end if this worker still holds it; a job that has ended will not resume, so its saved states go."""
        ended = self._transaction(lambda s: leases.finish_job(s, job_id, self.lease_owner, status, error_code=code, error_message=message))
        if ended:
            self._remove_states(job_id)
        return ended

    def _remove_states(self, job_id: str) -> None:
        try:
            self.storage.delete_states(job_id)
        except OSError:
            log.warning("could not remove the saved states of job %s", job_id, exc_info=True)

    def _open(self, sha256: str, role: str) -> Image.Image:
        try:
            # Decoded as the API decoded it at submit, so a picture it accepted decodes here the same way.
            return decode_image(self._from_store(lambda: self.storage.read_upload(sha256)), role=role)
        except FileNotFoundError:
            raise JobFailure("input_missing", f"the {role} image is no longer in storage; submit the job again") from None
        except InvalidImage as error:
            raise JobFailure("invalid_image", error.message) from None

    def _saved_state(self, job_id: str, params: TransferParams) -> TransferState | None:
        data = self._from_store(lambda: self.storage.load_state(job_id))
        if data is None:
            return None
        try:
            state = TransferState.from_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
        except Exception:  # a damaged state only costs the progress it held
            log.warning("ignoring unreadable saved state of job %s", job_id, exc_info=True)
            return None
        if not state.belongs_to(params):
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

        thread = threading.Thread(target=logs.in_this_context(beat), name=f"heartbeat-{held.ids()[0]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
