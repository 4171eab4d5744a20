"""Webhook deliveries, the outbox: rows written in the transaction of the change they report, claimed
and sent later by the workers' deliverer threads, tried again with exponential backoff, and recorded.

Writing a row is all a state change does (an insert, or for a checkpoint usually an update): a job
never waits for a receiver. Each function works in the caller's session and leaves committing to it.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from ..adapters.db import rowcount
from ..adapters.models import ApiKey, DeliveryStatus, Job, WebhookDelivery, WebhookEvent, iso_timestamp, utcnow
from .job_json import WebhookEventBody, summary_fields

# The longest wait between two attempts, however many have failed.
MAX_BACKOFF_SECONDS = 3600.0
# Each wait is stretched by up to this fraction at random, so deliveries that failed together do not return together.
JITTER = 0.2
LAST_ERROR_LENGTH = 500
FINAL_EVENTS = (WebhookEvent.SUCCEEDED, WebhookEvent.FAILED, WebhookEvent.CANCELED)


def event_body(job: Job, event: WebhookEvent, at: datetime) -> str:
    """Return the JSON body of the event, minified, as it is signed and sent."""
    links = {"self": f"/v1/jobs/{job.id}", "result": f"/v1/jobs/{job.id}/result"}
    body = WebhookEventBody.model_validate(
        {"type": f"job.{event.value}", "timestamp": iso_timestamp(at), "data": {**summary_fields(job), "links": links}}
    )
    return body.model_dump_json()


def subscribed(job: Job, event: WebhookEvent) -> bool:
    """Tell whether the job's webhook wants `event`."""
    return job.webhook_url is not None and event.value in (job.webhook_events or ())


def record_event(session: Session, job: Job, event: WebhookEvent) -> None:
    """Add a delivery of `event` for the job (as it is in `session` now), if its webhook wants it.

    An end makes the checkpoint delivery not yet tried needless: the end carries the final progress,
    and a receiver hears no progress after the end.
    """
    if job.webhook_url is None:
        return
    now = utcnow()
    if event in FINAL_EVENTS:
        session.execute(
            delete(WebhookDelivery).where(WebhookDelivery.job_id == job.id, WebhookDelivery.event == WebhookEvent.CHECKPOINT, _unsent(now))
        )
    if subscribed(job, event):
        session.add(
            WebhookDelivery(
                job_id=job.id,
                event=event,
                message_id=f"msg_{uuid.uuid4().hex}",
                body=event_body(job, event, now),
                status=DeliveryStatus.PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
        session.flush()


def record_events(session: Session, job_ids: Sequence[str], event: WebhookEvent) -> None:
    """Add a delivery of `event` for each of the jobs whose webhook wants it (call after the change, in its transaction)."""
    if not job_ids:
        return
    jobs = session.scalars(
        select(Job).where(Job.id.in_(list(job_ids)), Job.webhook_url.is_not(None)).execution_options(populate_existing=True)
    )
    for job in jobs:
        record_event(session, job, event)


def record_checkpoint(session: Session, job: Job, *, every_seconds: float) -> None:
    """Report the job's latest checkpoint, if its webhook wants checkpoints, at most once every `every_seconds`.

    A job has at most one checkpoint delivery waiting (not being sent): a new checkpoint replaces its
    body. A new delivery is made only when none waits, due `every_seconds` after the one before it.
    """
    if not subscribed(job, WebhookEvent.CHECKPOINT):
        return
    now = utcnow()
    body = event_body(job, WebhookEvent.CHECKPOINT, now)
    waiting = and_(WebhookDelivery.job_id == job.id, WebhookDelivery.event == WebhookEvent.CHECKPOINT, _waiting(now))
    if rowcount(session.execute(update(WebhookDelivery).where(waiting).values(body=body))):
        return
    last = session.scalar(
        select(func.max(WebhookDelivery.created_at)).where(
            WebhookDelivery.job_id == job.id, WebhookDelivery.event == WebhookEvent.CHECKPOINT
        )
    )
    due = max(now, last + timedelta(seconds=every_seconds)) if last is not None else now
    session.add(
        WebhookDelivery(
            job_id=job.id,
            event=WebhookEvent.CHECKPOINT,
            message_id=f"msg_{uuid.uuid4().hex}",
            body=body,
            status=DeliveryStatus.PENDING,
            attempts=0,
            next_attempt_at=due,
            created_at=now,
        )
    )
    session.flush()


def _waiting(now: datetime) -> Any:
    """Return the condition that a delivery is pending and no deliverer is sending it."""
    return and_(
        WebhookDelivery.status == DeliveryStatus.PENDING,
        or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
    )


def _unsent(now: datetime) -> Any:
    """Return the condition that a delivery was never tried and is not being tried now."""
    return and_(_waiting(now), WebhookDelivery.attempts == 0)


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery a deliverer holds for one attempt: what to send, where, and whose secret signs it."""

    id: int
    attempt: int
    message_id: str
    body: str
    url: str
    created_at: datetime
    owner: ApiKey
    job_id: str


def claim_due(session: Session, *, lease_seconds: float, now: datetime | None = None) -> ClaimedDelivery | None:
    """Take the oldest due delivery for one attempt of at most `lease_seconds`; None when none is due.

    On Postgres the row is locked with SKIP LOCKED, so deliverers never wait on each other; on SQLite,
    which has one writer at a time, the conditional UPDATE alone decides. A deliverer that dies
    mid-send leaves the delivery to be taken again once `lease_seconds` have passed.
    """
    now = now or utcnow()
    due = and_(_waiting(now), WebhookDelivery.next_attempt_at <= now)
    query = select(WebhookDelivery.id).where(due).order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(1)
    delivery_id = session.scalar(query.with_for_update(skip_locked=True))
    if delivery_id is None:
        return None
    claimed = rowcount(
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, due)
            .values(
                attempts=WebhookDelivery.attempts + 1,
                claimed_until=now + timedelta(seconds=lease_seconds),
                last_attempt_at=now,
            )
        )
    )
    if not claimed:
        return None  # another deliverer took it between the two statements (SQLite)
    delivery, url, owner = session.execute(
        select(WebhookDelivery, Job.webhook_url, ApiKey)
        .join(Job, Job.id == WebhookDelivery.job_id)
        .join(ApiKey, ApiKey.id == Job.owner_id)
        .where(WebhookDelivery.id == delivery_id)
        .execution_options(populate_existing=True)
    ).one()
    assert url is not None  # deliveries are recorded only for jobs with a webhook URL, which never changes after creation
    return ClaimedDelivery(
        delivery.id, delivery.attempts, delivery.message_id, delivery.body, url, delivery.created_at, owner, delivery.job_id
    )


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to: the receiver's status (None when none answered), an error, and its Retry-After in seconds."""

    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        """Tell whether the receiver took it: a 2xx answer (a redirect is a failure: the URL should be updated)."""
        return self.status_code is not None and 200 <= self.status_code < 300


def record_attempt(
    session: Session,
    claimed: ClaimedDelivery,
    attempt: Attempt,
    *,
    backoff_seconds: float,
    retry_for_seconds: float,
    now: datetime | None = None,
) -> DeliveryStatus | None:
    """Record the attempt: delivered, or pending again after a backoff, or failed once `retry_for_seconds` after
    the event have passed (at once on 410 Gone). Return the new status; None if another deliverer holds it now."""
    now = now or utcnow()
    values: dict[str, Any] = {"last_status_code": attempt.status_code, "claimed_until": None}
    if attempt.delivered:
        values.update(status=DeliveryStatus.DELIVERED, finished_at=now, last_error=None)
    else:
        values["last_error"] = (attempt.error or f"the receiver answered HTTP {attempt.status_code}")[:LAST_ERROR_LENGTH]
        next_attempt_at = now + timedelta(seconds=retry_delay(claimed.attempt, backoff_seconds, attempt.retry_after))
        if attempt.status_code == 410 or next_attempt_at > claimed.created_at + timedelta(seconds=retry_for_seconds):
            values.update(status=DeliveryStatus.FAILED, finished_at=now)
        else:
            values.update(status=DeliveryStatus.PENDING, next_attempt_at=next_attempt_at)
    held = rowcount(
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == claimed.id, WebhookDelivery.attempts == claimed.attempt).values(**values)
        )
    )
    return values["status"] if held else None


def retry_delay(attempts: int, backoff_seconds: float, retry_after: float | None = None) -> float:
    """Return how long to wait after the `attempts`-th failed attempt: the backoff doubled each time, with jitter,
    at most MAX_BACKOFF_SECONDS, and no sooner than the receiver's Retry-After asked."""
    delay = min(MAX_BACKOFF_SECONDS, backoff_seconds * 2 ** (attempts - 1)) * (1 + JITTER * random.random())
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_BACKOFF_SECONDS))
    return delay


def deliveries_of(session: Session, job_id: str, limit: int = 20) -> Sequence[WebhookDelivery]:
    """Return the job's latest deliveries, newest first."""
    query = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
    return session.scalars(query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(limit)).all()


def deliveries_of_jobs(session: Session, job_ids: Sequence[str], limit: int = 20) -> dict[str, list[WebhookDelivery]]:
    """Return each job's latest deliveries, newest first, by job id: one query for a whole page of jobs."""
    if not job_ids:
        return {}
    newest_first = (WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    rank = func.row_number().over(partition_by=WebhookDelivery.job_id, order_by=newest_first).label("rank")
    ranked = select(WebhookDelivery.id, rank).where(WebhookDelivery.job_id.in_(job_ids)).subquery()
    query = select(WebhookDelivery).join(ranked, ranked.c.id == WebhookDelivery.id).where(ranked.c.rank <= limit)
    found: dict[str, list[WebhookDelivery]] = {job_id: [] for job_id in job_ids}
    for delivery in session.scalars(query.order_by(WebhookDelivery.job_id, *newest_first)):
        found[delivery.job_id].append(delivery)
    return found


def delivery_counts(session: Session) -> dict[str, int]:
    """Return how many deliveries are pending, delivered and failed, over every job (for monitoring)."""
    counts = {status.value: 0 for status in DeliveryStatus}
    query = select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
    counts.update({status: int(count) for status, count in session.execute(query).all()})
    return counts
