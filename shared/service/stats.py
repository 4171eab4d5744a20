"""The numbers `/metrics` reports about jobs, read from the database at the moment it is asked.

Every figure is an aggregate over the `jobs` table (webhook deliveries: `shared.service.deliveries.delivery_counts`), so what
Prometheus sees is exactly what the database holds, whichever worker or API process made the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import cast

from sqlalchemy import ColumnElement, SQLColumnExpression, case, func, select
from sqlalchemy.orm import Session

from ..adapters.models import Job, JobStatus, utcnow

# Seconds: a job waits from well under a second (an idle fleet) to hours (a long queue), and runs
# from seconds (a small picture on a GPU) to an hour or more (a large one on a CPU).
DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 10800.0)


@dataclass(frozen=True)
class DurationHistogram:
    """How many durations fell at or under each bucket's bound (cumulative, as Prometheus wants), their count and sum."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    total_seconds: float


def jobs_by_status(session: Session) -> dict[JobStatus, int]:
    """Count the jobs in each status (every status is present, 0 when none)."""
    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    return {status: counts.get(status, 0) for status in JobStatus}


def oldest_queued_at(session: Session) -> datetime | None:
    """Return when the oldest queued job was submitted, or None when the queue is empty."""
    return session.scalar(select(func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED))


def queue_age_seconds(session: Session, now: datetime | None = None) -> float:
    """Return how long the oldest queued job has waited since it was submitted (0 when none waits)."""
    oldest = oldest_queued_at(session)
    return max(0.0, ((now or utcnow()) - oldest).total_seconds()) if oldest is not None else 0.0


def queue_wait_histogram(session: Session, buckets: Sequence[float] = DURATION_BUCKETS) -> DurationHistogram:
    """Histogram the time from submission to first start of every job that has started."""
    waited = _seconds_between(session, Job.created_at, Job.started_at)
    row = session.execute(select(*_histogram_columns(waited, buckets)).where(Job.started_at.is_not(None))).one()
    return _histogram(row, buckets)


def run_time_histograms(session: Session, buckets: Sequence[float] = DURATION_BUCKETS) -> dict[JobStatus, DurationHistogram]:
    """Histogram the time from first start to end of every finished job that started, by how it ended."""
    ran = _seconds_between(session, Job.started_at, Job.finished_at)
    finished = [status for status in JobStatus if status.finished]
    rows = session.execute(
        select(Job.status, *_histogram_columns(ran, buckets))
        .where(Job.status.in_(finished), Job.started_at.is_not(None), Job.finished_at.is_not(None))
        .group_by(Job.status)
    ).all()
    found = {row[0]: _histogram(row[1:], buckets) for row in rows}
    empty = DurationHistogram(tuple((bound, 0) for bound in buckets), 0, 0.0)
    return {status: found.get(status, empty) for status in finished}


def _seconds_between(
    session: Session, start: SQLColumnExpression[datetime | None], end: SQLColumnExpression[datetime | None]
) -> ColumnElement[float]:
    """Return SQL for the seconds from `start` to `end`, in the database's own arithmetic."""
    if session.get_bind().dialect.name == "sqlite":
        # SQLite stores the times as text; julianday reads them to about 10 microseconds.
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    # EXTRACT(EPOCH ...) gives fractional seconds; SQLAlchemy types every EXTRACT as an integer.
    return cast("ColumnElement[float]", func.extract("epoch", end - start))


def _histogram_columns(seconds: ColumnElement[float], buckets: Sequence[float]) -> list[SQLColumnExpression[float | Decimal]]:
    counts = [func.coalesce(func.sum(case((seconds <= bound, 1), else_=0)), 0) for bound in buckets]
    return [*counts, func.count(), func.coalesce(func.sum(seconds), 0.0)]


def _histogram(row: Sequence[float | Decimal], buckets: Sequence[float]) -> DurationHistogram:
    counts = [int(value) for value in row[: len(buckets)]]
    count, total = row[len(buckets)], row[len(buckets) + 1]
    return DurationHistogram(tuple(zip(buckets, counts)), int(count), float(total))
