"""Read-only questions the pages ask that the job service has no function for (counts, the queue, failures)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from styleq.shared.adapters.models import ApiKey, Job, JobStatus


def _visible(query: Select, owner: ApiKey) -> Select:
    return query if owner.is_admin else query.where(Job.owner_id == owner.id)


def status_counts(session: Session, owner: ApiKey) -> dict[str, int]:
    """Return how many of the jobs `owner` sees are in each status (every status present, zeros included)."""
    query = _visible(select(Job.status, func.count()).group_by(Job.status), owner)
    counts = {status.value: 0 for status in JobStatus}
    counts.update({status: int(count) for status, count in session.execute(query).all()})
    return counts


def owner_names(session: Session, owner_ids: Iterable[int]) -> dict[int, str]:
    """Return the name of each key in `owner_ids`."""
    ids = set(owner_ids)
    if not ids:
        return {}
    # `.all()`: a Result has `keys()`, so `dict()` would take it for a mapping (ruff's C416 fix did just that).
    return dict(session.execute(select(ApiKey.id, ApiKey.name).where(ApiKey.id.in_(ids))).all())


def oldest_queued(session: Session) -> Job | None:
    """Return the job that has waited longest in the queue, or None when the queue is empty."""
    query = select(Job).where(Job.status == JobStatus.QUEUED).order_by(Job.created_at, Job.id).limit(1)
    return session.scalar(query)


def recent_failures(session: Session, limit: int = 10) -> Sequence[Job]:
    """Return the jobs that failed most recently."""
    query = select(Job).where(Job.status == JobStatus.FAILED)
    return session.scalars(query.order_by(Job.finished_at.desc(), Job.id.desc()).limit(limit)).all()


def jobs_by_id(session: Session, job_ids: Iterable[str | None]) -> dict[str, Job]:
    """Return the jobs among `job_ids` that still exist."""
    ids = {job_id for job_id in job_ids if job_id}
    if not ids:
        return {}
    return {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids))).all()}
