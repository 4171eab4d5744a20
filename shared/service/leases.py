"""The job service, worker side: claims, batches, checkpoints, leases and the sweep, each in the caller's transaction.

A running job is leased to one worker process: `Job.lease_owner` names it (`node/pid`) and
`Job.heartbeat_at` says when it last showed life. Every state change is a conditional UPDATE, so two
workers (or a worker and the sweeper) racing on one job cannot both win. Each change a job's
webhook reports adds its delivery in the same transaction (`shared.service.deliveries`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, and_, case, delete, func, or_, select, update
from sqlalchemy.orm import Session

from ..adapters.db import rowcount
from ..adapters.models import Checkpoint, Job, JobStatus, WebhookEvent, utcnow
from . import deliveries

# The most queued jobs a worker looks through for batch-mates: the oldest, so batching never lets a
# job jump far ahead of the queue.
BATCH_CANDIDATES = 64


# How long after its creation a job the API never marked as sent is sent by the sweeper instead.
NEVER_SENT_GRACE_SECONDS = 5.0


def claim_job(
    session: Session, job_id: str, lease_owner: str, gpu: str, lease_seconds: float, *, dead_owners: Sequence[str] = ()
) -> Job | None:
    """Lease the job to `lease_owner` if it is queued, or running on a lease gone stale or held by one of
    `dead_owners` (processes known to have died); None if someone else has it."""
    claimable = or_(Job.status == JobStatus.QUEUED, and_(Job.status == JobStatus.RUNNING, _lost(lease_seconds, dead_owners)))
    return _claim(session, job_id, lease_owner, gpu, claimable)


def give_up_stalled(session: Session, job_id: str, lease_seconds: float, max_attempts: int, *, dead_owners: Sequence[str] = ()) -> bool:
    """Fail the job as `worker_lost` if its lease is lost and this was its `max_attempts`-th attempt in a
    row to end without saving anything new; return whether it did. Call before `claim_job`."""
    lost = Job.id == job_id, Job.status == JobStatus.RUNNING, _lost(lease_seconds, dead_owners)
    gave_up = bool(rowcount(session.execute(update(Job).where(*lost, _stalled(max_attempts)).values(**_gave_up(max_attempts, utcnow())))))
    if gave_up:
        deliveries.record_events(session, [job_id], WebhookEvent.FAILED)
    return gave_up


def _lost(lease_seconds: float, dead_owners: Sequence[str], now: datetime | None = None) -> ColumnElement[bool]:
    """Return the condition that a running job's lease is lost: stale, or held by a process known to be dead."""
    stale = Job.heartbeat_at < (now or utcnow()) - timedelta(seconds=lease_seconds)
    return or_(stale, Job.lease_owner.in_(list(dead_owners))) if dead_owners else stale


def _stalled(max_attempts: int) -> ColumnElement[bool]:
    """Return the condition that the ending attempt saved nothing newer and was the last one allowed."""
    return and_(Job.saved_iteration <= Job.resumed_iteration, Job.stalled_attempts + 1 >= max_attempts)


def _gave_up(max_attempts: int, now: datetime) -> dict[str, Any]:
    return {
        "status": JobStatus.FAILED,
        "finished_at": now,
        "stalled_attempts": Job.stalled_attempts + 1,
        "error_code": "worker_lost",
        "error_message": f"the workers running this job stopped {max_attempts} times in a row without getting further; the job was given up",
    }


def _stall_count() -> ColumnElement[int]:
    """Return the attempts-without-progress count after an attempt that ended abnormally."""
    return case((Job.saved_iteration <= Job.resumed_iteration, Job.stalled_attempts + 1), else_=0)


def lease_owner_host(lease_owner: str) -> str:
    """Return the machine a lease owner names: `host` of `name@host/pid`, or of `host/pid` for an unnamed worker."""
    return lease_owner.rpartition("/")[0].split("@", 1)[-1]


def local_lease_owners(session: Session, host: str) -> list[str]:
    """Return the lease owners of running jobs whose process runs on `host`."""
    owners = session.scalars(select(Job.lease_owner).where(Job.status == JobStatus.RUNNING, Job.lease_owner.like(f"%{host}/%")))
    return sorted({owner for owner in owners if owner is not None and lease_owner_host(owner) == host})


def batch_candidates(session: Session, limit: int = BATCH_CANDIDATES) -> Sequence[Job]:
    """Return the oldest queued jobs not asked to cancel: those a worker may look through for batch-mates."""
    query = select(Job).where(Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False))
    return session.scalars(query.order_by(Job.created_at, Job.id).limit(limit)).all()


def claim_batch_mates(session: Session, job_ids: Sequence[str], lease_owner: str, gpu: str) -> list[Job]:
    """Lease to `lease_owner` each of the jobs that is still queued; return those it got, in order.

    Each is the same conditional UPDATE as `claim_job`, so a job another worker claimed first is
    simply left out. Only queued jobs are taken: one on a stale lease is the sweeper's to requeue.
    """
    claimed = (_claim(session, job_id, lease_owner, gpu, Job.status == JobStatus.QUEUED) for job_id in job_ids)
    return [job for job in claimed if job is not None]


def record_batch(session: Session, job_ids: Sequence[str], lease_owner: str, batch_id: str | None) -> None:
    """Record on each of the jobs `lease_owner` holds that they run together, as batch `batch_id`."""
    session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.lease_owner == lease_owner, Job.status == JobStatus.RUNNING)
        .values(batch_size=len(job_ids), batch_id=batch_id)
    )


def _claim(session: Session, job_id: str, lease_owner: str, gpu: str, claimable: ColumnElement[bool]) -> Job | None:
    now = utcnow()
    claimed = rowcount(
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.cancel_requested.is_(False), claimable)
            .values(
                status=JobStatus.RUNNING,
                lease_owner=lease_owner,
                gpu=gpu,
                heartbeat_at=now,
                attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, now),
                batch_size=1,
                batch_id=None,
                # Taking over a lost lease ends the attempt that held it: it counts as stalled if it saved nothing.
                stalled_attempts=case((Job.status == JobStatus.RUNNING, _stall_count()), else_=Job.stalled_attempts),
                resumed_iteration=Job.saved_iteration,
            )
        )
    )
    if not claimed:
        return None
    job = session.get_one(Job, job_id)
    session.refresh(job)
    deliveries.record_event(session, job, WebhookEvent.RUNNING)
    return job


def _held(job_id: str, lease_owner: str) -> tuple[ColumnElement[bool], ...]:
    """Return the conditions under which `lease_owner` still holds the job."""
    return Job.id == job_id, Job.lease_owner == lease_owner, Job.status == JobStatus.RUNNING


def record_checkpoint(session: Session, job_id: str, lease_owner: str, values: dict[str, Any], *, has_preview: bool = False) -> bool:
    """Store one checkpoint and the job's progress, renewing the lease; return True while the worker should go on.

    False means stop: the job was canceled or deleted, or another worker took it over.
    """
    return record_checkpoints(session, job_id, lease_owner, [values], has_preview=has_preview)


def record_checkpoints(
    session: Session,
    job_id: str,
    lease_owner: str,
    checkpoints: Sequence[dict[str, Any]],
    *,
    has_preview: bool = False,
    saved_iteration: int | None = None,
    checkpoint_event_seconds: float = 0.0,
) -> bool:
    """Store consecutive checkpoints (oldest first) in one transaction; the job's progress is the last one's.

    Returns what `record_checkpoint` does. A worker on a fast GPU reaches a checkpoint every few
    milliseconds; one commit for a second's worth of them keeps the database out of its loop.
    `saved_iteration` is the iteration of a state the worker saves once this returns True: the worker
    writes its files only after the database confirms that it still holds the job. A webhook that
    wants checkpoints hears of the latest at most every `checkpoint_event_seconds`.
    """
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.lease_owner != lease_owner or job.status is not JobStatus.RUNNING:
        return False
    if not checkpoints:
        return not job.cancel_requested
    # A run resumed from a saved state records again the iterations after it: they replace the old rows.
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.iteration >= checkpoints[0]["iteration"]))
    session.add_all(Checkpoint(job_id=job_id, **values) for values in checkpoints)
    values = checkpoints[-1]
    job.iteration = values["iteration"]
    job.content_loss, job.style_loss = values["content"], values["style"]
    job.tv_loss, job.total_loss, job.elapsed_s = values["tv"], values["total"], values["elapsed_s"]
    job.heartbeat_at = utcnow()
    job.has_preview = job.has_preview or has_preview
    if saved_iteration is not None:
        job.saved_iteration = max(job.saved_iteration, saved_iteration)
    deliveries.record_checkpoint(session, job, every_seconds=checkpoint_event_seconds)
    return not job.cancel_requested


def heartbeat(session: Session, job_id: str, lease_owner: str) -> bool:
    """Renew the lease on the job; return False when it is no longer `lease_owner`'s."""
    return bool(rowcount(session.execute(update(Job).where(*_held(job_id, lease_owner)).values(heartbeat_at=utcnow()))))


def release_job(
    session: Session,
    job_id: str,
    lease_owner: str,
    *,
    failed: bool = False,
    max_attempts: int | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    saved_iteration: int | None = None,
) -> JobStatus | None:
    """Hand a job `lease_owner` holds back to the queue (a worker shutting down, storage failing); return its new status.

    The job is marked unsent, so the sweeper sends it if the caller cannot. With `failed`, the attempt
    counts against `max_attempts` whatever progress it made (the same failure would come again at the
    end), and the job at its last attempt fails with `error_code` instead. `saved_iteration` is the
    iteration of the state the worker saved last (as it stops, where it stopped): the next attempt
    resumes there. None means the lease was no longer held.
    """
    held = _held(job_id, lease_owner)
    now = utcnow()
    if failed and max_attempts is not None:
        gave_up = rowcount(
            session.execute(
                update(Job)
                .where(*held, Job.stalled_attempts + 1 >= max_attempts)
                .values(**{**_gave_up(max_attempts, now), "error_code": error_code, "error_message": error_message})
            )
        )
        if gave_up:
            deliveries.record_events(session, [job_id], WebhookEvent.FAILED)
            return JobStatus.FAILED
    released = rowcount(
        session.execute(
            update(Job)
            .where(*held)
            .values(
                status=JobStatus.QUEUED,
                lease_owner=None,
                gpu=None,
                enqueued_at=None,
                heartbeat_at=now,
                stalled_attempts=Job.stalled_attempts + 1 if failed else Job.stalled_attempts,
                saved_iteration=_at_least(Job.saved_iteration, saved_iteration),
            )
        )
    )
    return JobStatus.QUEUED if released else None


def record_resumed(session: Session, job_id: str, lease_owner: str, iteration: int) -> None:
    """Record that `lease_owner`'s attempt at the job resumed from the state saved at `iteration`.

    The claim guesses it from the last save the database heard of; the newest state on disk can be later
    (one written just before its worker died, whose checkpoint record never came), and it is the one resumed.
    """
    session.execute(
        update(Job)
        .where(*_held(job_id, lease_owner))
        .values(resumed_iteration=iteration, saved_iteration=_at_least(Job.saved_iteration, iteration))
    )


def _at_least(column: SQLColumnExpression[int], value: int | None) -> SQLColumnExpression[int]:
    """Return `column` raised to `value` where it is lower (unchanged for None)."""
    return column if value is None else case((column < value, value), else_=column)


def finish_job(
    session: Session, job_id: str, lease_owner: str, status: JobStatus, *, error_code: str | None = None, error_message: str | None = None
) -> bool:
    """Record the end of a run that `lease_owner` still holds; return False when it no longer held it."""
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "heartbeat_at": utcnow()}
    if error_code is not None:
        values.update(error_code=error_code, error_message=error_message)
    finished = bool(rowcount(session.execute(update(Job).where(*_held(job_id, lease_owner)).values(**values))))
    if finished:
        deliveries.record_events(session, [job_id], WebhookEvent(status.value))
    return finished


@dataclass
class SweepResult:
    """What a sweep did: the jobs to send to the broker again, and those it ended (their saved states can go)."""

    to_send: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)


def sweep(
    session: Session,
    *,
    lease_seconds: float,
    requeue_after_seconds: float,
    max_attempts: int,
    dead_owners: Sequence[str] = (),
    now: datetime | None = None,
) -> SweepResult:
    """Recover jobs from lost workers and lost messages.

    A running job whose lease is lost (its heartbeat stale, or its process among `dead_owners`) goes
    back to the queue, or fails after `max_attempts` attempts in a row that saved nothing new; a
    canceled-while-running one ends as canceled. A queued job not picked up within
    `requeue_after_seconds` of being sent is sent again: a duplicate message is harmless, since only
    one claim can succeed.
    """
    now = now or utcnow()
    lost = Job.status == JobStatus.RUNNING, _lost(lease_seconds, dead_owners, now)
    canceled = session.scalars(select(Job.id).where(*lost, Job.cancel_requested.is_(True))).all()
    session.execute(update(Job).where(Job.id.in_(canceled), *lost).values(status=JobStatus.CANCELED, finished_at=now))
    failed = session.scalars(select(Job.id).where(*lost, _stalled(max_attempts))).all()
    session.execute(update(Job).where(Job.id.in_(failed), *lost).values(**_gave_up(max_attempts, now)))
    deliveries.record_events(session, canceled, WebhookEvent.CANCELED)
    deliveries.record_events(session, failed, WebhookEvent.FAILED)
    retried = session.scalars(select(Job.id).where(*lost)).all()
    if retried:
        session.execute(
            update(Job)
            .where(Job.id.in_(retried), *lost)
            .values(status=JobStatus.QUEUED, lease_owner=None, gpu=None, stalled_attempts=_stall_count())
        )
    waiting = now - timedelta(seconds=requeue_after_seconds)
    # A job never sent (the broker was down, or the API died between commit and send) goes at the next
    # sweep, once the API has had time to send it itself.
    unsent = now - timedelta(seconds=min(requeue_after_seconds, NEVER_SENT_GRACE_SECONDS))
    forgotten = session.scalars(
        select(Job.id).where(
            Job.status == JobStatus.QUEUED,
            or_(Job.enqueued_at < waiting, and_(Job.enqueued_at.is_(None), Job.created_at < unsent)),
        )
    ).all()
    return SweepResult(to_send=sorted(set(retried) | set(forgotten)), ended=sorted({*canceled, *failed}))
