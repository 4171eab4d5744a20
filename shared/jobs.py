"""The job service: what the API and the workers do to jobs, each a few statements in the caller's transaction.

The database is the source of truth. A broker message carries only a job id; every state change is a
conditional UPDATE, so two workers (or a worker and a sweeper) racing on one job cannot both win.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .errors import Conflict, NotFound
from .models import ApiKey, Checkpoint, Job, JobStatus, utcnow
from .params import TransferParams

# The Celery task the API sends by name, so the API never imports the worker.
RUN_JOB_TASK = "styleq.run_job"
FINISHED = [status.value for status in JobStatus if status.finished]
# The most checkpoints one read returns.
CHECKPOINT_PAGE = 1000
# The most queued jobs a worker looks through for batch-mates: the oldest, so batching never lets a
# job jump far ahead of the queue.
BATCH_CANDIDATES = 64


def new_job_id() -> str:
    """Return a fresh, unguessable job id."""
    return uuid.uuid4().hex


def create_job(
    session: Session,
    owner: ApiKey,
    params: TransferParams,
    content_sha256: str,
    style_sha256: str,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Add a queued job; with an idempotency key already used by `owner`, return that job instead.

    Returns the job and whether it is new.
    """
    if idempotency_key is not None:
        existing = session.scalar(select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == idempotency_key))
        if existing is not None:
            return existing, False
    job = Job(
        id=new_job_id(),
        owner_id=owner.id,
        status=JobStatus.QUEUED.value,
        params=params.to_dict(),
        content_sha256=content_sha256,
        style_sha256=style_sha256,
        idempotency_key=idempotency_key,
        iterations=params.iterations,
    )
    session.add(job)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        # Two requests with the same key at once: the other one's job is the answer.
        existing = session.scalar(select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return existing, False
    return job, True


def get_job(session: Session, owner: ApiKey, job_id: str) -> Job:
    """Return the job if `owner` may see it (its own, or any for an admin)."""
    job = session.get(Job, job_id) if isinstance(job_id, str) and len(job_id) <= 64 else None
    if job is None or (job.owner_id != owner.id and not owner.is_admin):
        raise NotFound(f"no job {job_id!r}")
    return job


@dataclass(frozen=True)
class JobPage:
    jobs: Sequence[Job]
    next_cursor: str | None


def list_jobs(session: Session, owner: ApiKey, *, status: str | None = None, cursor: str | None = None, limit: int = 20) -> JobPage:
    """Return `owner`'s jobs newest first, `limit` at a time; the cursor is the last job id of the page before."""
    query = select(Job)
    if not owner.is_admin:
        query = query.where(Job.owner_id == owner.id)
    if status is not None:
        query = query.where(Job.status == status)
    if cursor is not None:
        after = session.get(Job, cursor) if len(cursor) <= 64 else None
        if after is None:
            raise NotFound(f"cursor {cursor!r} names no job")
        query = query.where(or_(Job.created_at < after.created_at, and_(Job.created_at == after.created_at, Job.id < after.id)))
    jobs = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
    next_cursor = jobs[limit - 1].id if len(jobs) > limit else None
    return JobPage(jobs[:limit], next_cursor)


def queue_position(session: Session, job: Job) -> int | None:
    """Return how many queued jobs are ahead of `job`, plus one, or None when it is not queued."""
    if job.status != JobStatus.QUEUED.value:
        return None
    ahead = session.scalar(
        select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED.value, Job.created_at < job.created_at)
    )
    return int(ahead or 0) + 1


def checkpoints_after(session: Session, job_id: str, after: int = 0, limit: int = CHECKPOINT_PAGE) -> Sequence[Checkpoint]:
    """Return the job's checkpoints past iteration `after`, in order."""
    query = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.iteration > after)
    return session.scalars(query.order_by(Checkpoint.iteration).limit(limit)).all()


def mark_enqueued(session: Session, job_id: str) -> None:
    """Record that the job was just handed to the broker."""
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel a queued job at once, or ask a running one to stop at its next checkpoint."""
    now = utcnow()
    if job.state.finished:
        raise Conflict(f"job {job.id} has already {job.status}", code="job_finished")
    ended = session.execute(
        update(Job).where(Job.id == job.id, Job.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.CANCELED.value, cancel_requested=True, finished_at=now)
    ).rowcount
    if not ended:
        session.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING.value).values(cancel_requested=True))
    session.refresh(job)
    return job


def delete_job(session: Session, job: Job) -> list[str]:
    """Delete the job and its checkpoints; return the upload hashes no other job uses any more."""
    hashes = {job.content_sha256, job.style_sha256}
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job.id))
    session.delete(job)
    session.flush()
    used = session.scalars(select(Job.content_sha256).where(Job.content_sha256.in_(hashes))).all()
    used += session.scalars(select(Job.style_sha256).where(Job.style_sha256.in_(hashes))).all()
    return sorted(hashes - set(used))


def upload_in_use(session: Session, sha256: str) -> bool:
    """Tell whether any job reads the upload with this hash."""
    return session.scalar(select(func.count()).select_from(Job).where(or_(Job.content_sha256 == sha256, Job.style_sha256 == sha256))) > 0


# --- the worker's side -------------------------------------------------------------------------


def claim_job(session: Session, job_id: str, worker: str, gpu: str, lease_seconds: float) -> Job | None:
    """Take the job for `worker` if it is queued, or running on a lease gone stale; None if someone else has it."""
    stale = utcnow() - timedelta(seconds=lease_seconds)
    claimable = or_(Job.status == JobStatus.QUEUED.value, and_(Job.status == JobStatus.RUNNING.value, Job.heartbeat_at < stale))
    return _claim(session, job_id, worker, gpu, claimable)


def batch_candidates(session: Session, limit: int = BATCH_CANDIDATES) -> Sequence[Job]:
    """Return the oldest queued jobs not asked to cancel: those a worker may look through for batch-mates."""
    query = select(Job).where(Job.status == JobStatus.QUEUED.value, Job.cancel_requested.is_(False))
    return session.scalars(query.order_by(Job.created_at, Job.id).limit(limit)).all()


def claim_batch_mates(session: Session, job_ids: Sequence[str], worker: str, gpu: str) -> list[Job]:
    """Take for `worker` each of the jobs that is still queued; return those it got, in order.

    Each is the same conditional UPDATE as `claim_job`, so a job another worker claimed first is
    simply left out. Only queued jobs are taken: one on a stale lease is the sweeper's to requeue.
    """
    claimed = (_claim(session, job_id, worker, gpu, Job.status == JobStatus.QUEUED.value) for job_id in job_ids)
    return [job for job in claimed if job is not None]


def record_batch(session: Session, job_ids: Sequence[str], worker: str, batch_id: str | None) -> None:
    """Record on each of the jobs `worker` holds that they run together, as batch `batch_id`."""
    session.execute(
        update(Job).where(Job.id.in_(list(job_ids)), Job.worker == worker, Job.status == JobStatus.RUNNING.value)
        .values(batch_size=len(job_ids), batch_id=batch_id)
    )


def _claim(session: Session, job_id: str, worker: str, gpu: str, claimable: ColumnElement[bool]) -> Job | None:
    now = utcnow()
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.cancel_requested.is_(False), claimable)
        .values(
            status=JobStatus.RUNNING.value, worker=worker, gpu=gpu, heartbeat_at=now, attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now), batch_size=1, batch_id=None,
        )
    ).rowcount
    if not claimed:
        return None
    job = session.get(Job, job_id)
    session.refresh(job)
    return job


def record_checkpoint(session: Session, job_id: str, worker: str, values: dict[str, Any], *, has_preview: bool = False) -> bool:
    """Store one checkpoint and the job's progress and heartbeat; return True while the worker should go on.

    False means stop: the job was canceled or deleted, or another worker took it over.
    """
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.worker != worker or job.status != JobStatus.RUNNING.value:
        return False
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.iteration >= values["iteration"]))
    session.add(Checkpoint(job_id=job_id, **values))
    job.iteration = values["iteration"]
    job.content_loss, job.style_loss = values["content"], values["style"]
    job.tv_loss, job.total_loss, job.elapsed_s = values["tv"], values["total"], values["elapsed_s"]
    job.heartbeat_at = utcnow()
    job.has_preview = job.has_preview or has_preview
    return not job.cancel_requested


def heartbeat(session: Session, job_id: str, worker: str) -> bool:
    """Renew the worker's lease on the job; return False when the lease is no longer its own."""
    return bool(session.execute(
        update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.RUNNING.value).values(heartbeat_at=utcnow())
    ).rowcount)


def finish_job(session: Session, job_id: str, worker: str, status: JobStatus, *, error_code: str | None = None, error_message: str | None = None) -> bool:
    """Record the end of a run that `worker` still holds; return False when it no longer held it."""
    values: dict[str, Any] = {"status": status.value, "finished_at": utcnow(), "heartbeat_at": utcnow()}
    if error_code is not None:
        values.update(error_code=error_code, error_message=error_message)
    return bool(session.execute(
        update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.RUNNING.value).values(**values)
    ).rowcount)


def sweep(session: Session, *, lease_seconds: float, requeue_after_seconds: float, max_attempts: int, now: datetime | None = None) -> list[str]:
    """Recover jobs from lost workers and lost messages; return the ids to send to the broker again.

    A running job whose heartbeat is stale goes back to the queue (or fails after `max_attempts`);
    a canceled-while-running one ends as canceled. A queued job not picked up within
    `requeue_after_seconds` of being sent is sent again: a duplicate message is harmless, since only
    one claim can succeed.
    """
    now = now or utcnow()
    stale = now - timedelta(seconds=lease_seconds)
    lost = Job.status == JobStatus.RUNNING.value, Job.heartbeat_at < stale
    session.execute(update(Job).where(*lost, Job.cancel_requested.is_(True)).values(status=JobStatus.CANCELED.value, finished_at=now))
    session.execute(
        update(Job).where(*lost, Job.attempts >= max_attempts).values(
            status=JobStatus.FAILED.value, finished_at=now, error_code="worker_lost",
            error_message=f"the worker running this job stopped answering {max_attempts} times; the job was given up",
        )
    )
    retried = session.scalars(select(Job.id).where(*lost)).all()
    if retried:
        session.execute(update(Job).where(Job.id.in_(retried), *lost).values(status=JobStatus.QUEUED.value, worker=None, gpu=None))
    waiting = now - timedelta(seconds=requeue_after_seconds)
    forgotten = session.scalars(
        select(Job.id).where(
            Job.status == JobStatus.QUEUED.value,
            # A job never sent (the API died between commit and send) counts from its creation.
            or_(Job.enqueued_at < waiting, and_(Job.enqueued_at.is_(None), Job.created_at < waiting)),
        )
    ).all()
    return sorted(set(retried) | set(forgotten))
