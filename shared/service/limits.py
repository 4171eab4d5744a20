"""Fair use per API key: requests counted in one-minute windows, and jobs queued or running at once.

The counts live in the database, so every API process on every host enforces the same limit for a
key. Admin keys are exempt, and a limit of 0 is off.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from ..adapters.models import ApiKey, Job, JobStatus, RequestWindow
from ..domain.errors import LimitExceeded

WINDOW = timedelta(minutes=1)
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
# When a queued or running job will end cannot be known; a client asked back this soon is no burden.
ACTIVE_JOBS_RETRY_AFTER_SECONDS = 30


def window_start(now: datetime) -> datetime:
    """Return the start of the one-minute window that `now` falls in."""
    return now.replace(second=0, microsecond=0)


def count_request(session: Session, owner: ApiKey, *, limit: int, now: datetime) -> None:
    """Count one request of `owner` in the current window, in the caller's transaction.

    The windows are fixed minutes of each API host's clock, so a burst across a window's edge can
    reach twice `limit` within 60 s; a refused request is not counted once the caller rolls back.

    Raises:
        LimitExceeded: past `limit` requests in this window (`too_many_requests`), retry after the window ends.
    """
    if limit <= 0 or owner.is_admin:
        return
    start = window_start(now)
    requests = session.execute(_add_request(session, owner.id, start)).scalar_one()
    if requests == 1:
        # The key's first request in this window, so at most once a minute a key: its older windows
        # are never read again. Only its own rows, so two processes never wait on each other's.
        session.execute(delete(RequestWindow).where(RequestWindow.api_key_id == owner.id, RequestWindow.window_start < start))
    if requests > limit:
        retry_after = max(1, math.ceil((start + WINDOW - now).total_seconds()))
        raise LimitExceeded(
            f"this API key has made more than {limit} requests this minute, the most allowed; try again in {retry_after} s",
            code="too_many_requests",
            retry_after_seconds=retry_after,
        )


def _add_request(session: Session, api_key_id: int, start: datetime) -> ReturningInsert[int]:
    """Return the one atomic upsert that adds a request to the key's window and returns the window's count."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(RequestWindow).values(api_key_id=api_key_id, window_start=start, requests=1)
    return statement.on_conflict_do_update(
        index_elements=[RequestWindow.api_key_id, RequestWindow.window_start],
        set_={"requests": RequestWindow.requests + 1},
    ).returning(RequestWindow.requests)


def check_active_jobs(session: Session, owner: ApiKey, *, limit: int) -> None:
    """Refuse the job just added (flushed) for `owner` if it makes more than `limit` of its jobs queued or running.

    Concurrent submissions of one key are counted one after the other: on SQLite the insert already
    holds the database's one write lock, on Postgres the key's row is locked first (FOR NO KEY UPDATE,
    which the jobs' foreign key checks do not wait on) and the count then sees every committed job.

    Raises:
        LimitExceeded: `too_many_active_jobs`; the caller rolls the job back.
    """
    if limit <= 0 or owner.is_admin:
        return
    session.execute(select(ApiKey.id).where(ApiKey.id == owner.id).with_for_update(key_share=True))
    active = session.execute(select(func.count()).select_from(Job).where(Job.owner_id == owner.id, Job.status.in_(ACTIVE))).scalar_one()
    if active > limit:
        raise LimitExceeded(
            f"this API key already has {limit} jobs queued or running, the most allowed at once; "
            "submit again when one of them ends (or cancel one)",
            code="too_many_active_jobs",
            retry_after_seconds=ACTIVE_JOBS_RETRY_AFTER_SECONDS,
        )
