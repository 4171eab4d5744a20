"""The job service, client side: what the API and the dashboard do to jobs (and the sweeper's sending).

Each function works in the caller's session and leaves committing to it, except `submit_job` and
`enqueue_job`, whose files and broker message must be ordered around a commit. The database is the
source of truth: a broker message carries only a job id. The workers' side is `shared.service.leases`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from ..adapters.db import rowcount
from ..adapters.models import ApiKey, Checkpoint, Job, JobStatus, JobStyle, WebhookEvent, utcnow
from ..adapters.storage import Store
from ..domain.errors import Conflict, InvalidInput, NotFound, StorageUnavailable, Unprocessable
from ..domain.params import TransferParams
from . import deliveries, limits
from .webhooks import Subscription

log = logging.getLogger(__name__)
# The Celery task the API sends by name, so the API never imports the worker.
RUN_JOB_TASK = "styleq.run_job"
STATUSES = tuple(status.value for status in JobStatus)
FINISHED = tuple(status for status in JobStatus if status.finished)
# The most checkpoints one read returns.
CHECKPOINT_PAGE = 1000
T = TypeVar("T", str, bytes)


def new_job_id() -> str:
    """Return a fresh, unguessable job id."""
    return uuid.uuid4().hex


def submit_job(
    session: Session,
    storage: Store,
    owner: ApiKey,
    content: bytes,
    style: bytes | Sequence[bytes],
    params: TransferParams,
    idempotency_key: str | None = None,
    *,
    max_active_jobs: int = 0,
    webhook: Subscription | None = None,
) -> tuple[Job, bool]:
    """Save the uploads (the content, and one style picture or several to blend) and add the job in one committed transaction.

    Returns the job and whether it is new. A failure (a limit, a reused idempotency key) leaves no new
    file behind. A request repeating an idempotency key with the same pictures and parameters gets the
    first job back, and keeps none of its own files.
    """
    pictures = [content, *_one_or_many(style)]
    hashes = [hashlib.sha256(data).hexdigest() for data in pictures]
    written: set[str] = set()
    try:
        try:
            written = {sha for sha in hashes if not storage.has_upload(sha)}
            for data in pictures:
                storage.save_upload(data)
        except OSError as error:
            log.error("could not store an upload: %s", error)
            raise StorageUnavailable("the service could not store the pictures just now; try again later") from None
        job, created = create_job(
            session, owner, params, hashes[0], hashes[1:], idempotency_key, max_active_jobs=max_active_jobs, webhook=webhook
        )
        session.commit()
    except BaseException:
        session.rollback()
        _discard_uploads(session, storage, written)
        raise
    if not created:
        _discard_uploads(session, storage, written)
        return job, False
    # A delete that saw these uploads unused just before our commit may have removed them since.
    try:
        for data in pictures:
            storage.save_upload(data)
    except OSError:
        # The job is committed and its pictures were stored a moment ago; a worker that finds one gone fails it as input_missing.
        log.warning("could not store the uploads of job %s again after its commit", job.id, exc_info=True)
    return job, True


def _one_or_many(value: T | Sequence[T]) -> list[T]:
    """Return `value` as a list: one style (a picture's bytes, a hash) or several."""
    return [value] if isinstance(value, (str, bytes)) else list(value)


def _discard_uploads(session: Session, storage: Store, hashes: set[str]) -> None:
    """Remove the uploads among `hashes` that no job uses."""
    try:
        for sha in hashes:
            if not upload_in_use(session, sha):
                storage.delete_upload(sha)
        session.rollback()
    except Exception:
        log.warning("could not clean up uploads %s", sorted(hashes), exc_info=True)


def enqueue_job(session: Session, send: Callable[[str], None], job_id: str) -> bool:
    """Hand a committed job's id to the broker through `send`, then record when; return False if it was not sent.

    A job that could not be sent stays queued in the database, and the sweeper sends it later.
    """
    try:
        send(job_id)
    except Exception:
        log.warning("could not send job %s to the broker; the sweeper will send it later", job_id, exc_info=True)
        return False
    try:
        mark_enqueued(session, job_id)
        session.commit()
    except Exception:
        session.rollback()
        log.warning("job %s was sent but could not be marked as enqueued", job_id, exc_info=True)
    return True


def mark_enqueued(session: Session, job_id: str) -> None:
    """Record that the job was just handed to the broker."""
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))


def create_job(
    session: Session,
    owner: ApiKey,
    params: TransferParams,
    content_sha256: str,
    style_sha256: str | Sequence[str],
    idempotency_key: str | None = None,
    *,
    max_active_jobs: int = 0,
    webhook: Subscription | None = None,
) -> tuple[Job, bool]:
    """Add a queued job of one style upload or several to blend (with its `webhook`); with an idempotency key already used by `owner` for the same request, return that job instead.

    Returns the job and whether it is new.

    Raises:
        Unprocessable: no style, too many, or not one `params.style_weights` each; or the idempotency key was used by
            `owner` for other pictures, parameters or webhook.
        LimitExceeded: the new job would make more than `max_active_jobs` of `owner`'s jobs queued or running (0: no limit).
    """
    style_hashes = _one_or_many(style_sha256)
    try:
        params.check_style_count(len(style_hashes))
    except ValueError as error:
        raise Unprocessable(str(error), code="invalid_styles") from None
    if idempotency_key is not None:
        existing = session.scalar(select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == idempotency_key))
        if existing is not None:
            return _same_request(existing, params, content_sha256, style_hashes, webhook), False
    job = Job(
        id=new_job_id(),
        owner_id=owner.id,
        status=JobStatus.QUEUED,
        params=params.to_dict(),
        content_sha256=content_sha256,
        styles=[JobStyle(position=position, sha256=sha) for position, sha in enumerate(style_hashes)],
        idempotency_key=idempotency_key,
        iterations=params.iterations,
        webhook_url=webhook.url if webhook else None,
        webhook_events=list(webhook.events) if webhook else None,
    )
    session.add(job)
    try:
        with session.begin_nested():
            session.flush()
            # Counted with the new job in place, so that concurrent submissions are counted one after the other.
            limits.check_active_jobs(session, owner, limit=max_active_jobs)
    except IntegrityError:
        # Two requests with the same key at once: the other one's job is the answer.
        existing = session.scalar(select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return _same_request(existing, params, content_sha256, style_hashes, webhook), False
    return job, True


def _same_request(job: Job, params: TransferParams, content_sha256: str, style_hashes: list[str], webhook: Subscription | None) -> Job:
    """Return `job`, made by an earlier request with the same idempotency key, if this request asks for the same job.

    Raises:
        Unprocessable: other pictures, parameters or webhook under the same key (as Stripe and the IETF's
            Idempotency-Key draft answer), so a client's mistake is not hidden behind the first job.
    """
    # Compared as stored, after a JSON round trip: a tuple is saved as a list.
    same_params = json.loads(json.dumps(params.to_dict())) == job.params
    same_webhook = (job.webhook_url, job.webhook_events) == ((webhook.url, list(webhook.events)) if webhook else (None, None))
    differences = [
        name
        for name, same in (
            ("content image", job.content_sha256 == content_sha256),
            # The same pictures in another order are another blend.
            ("style images" if len(style_hashes) > 1 or len(job.styles) > 1 else "style image", job.style_hashes == style_hashes),
            ("params", same_params),
            ("webhook", same_webhook),
        )
        if not same
    ]
    if differences:
        raise Unprocessable(
            f"this Idempotency-Key was already used for job {job.id} with a different {' and '.join(differences)}; "
            "send a new key for a new request",
            code="idempotency_key_reused",
        )
    return job


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
    """Return `owner`'s jobs (every job for an admin) newest first, `limit` at a time, optionally of one status.

    The cursor is the last job id of the page before.

    Raises:
        InvalidInput: an unknown status, or a cursor that is not a job `owner` sees.
    """
    query = select(Job)
    if not owner.is_admin:
        query = query.where(Job.owner_id == owner.id)
    if status is not None:
        if status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, got {status!r}", code="invalid_query")
        query = query.where(Job.status == status)
    if cursor is not None:
        try:
            after = get_job(session, owner, cursor)
        except NotFound:
            raise InvalidInput(
                f"cursor {cursor!r} is not a job of this client; start again from the newest jobs", code="invalid_query"
            ) from None
        query = query.where(or_(Job.created_at < after.created_at, and_(Job.created_at == after.created_at, Job.id < after.id)))
    jobs = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
    next_cursor = jobs[limit - 1].id if len(jobs) > limit else None
    return JobPage(jobs[:limit], next_cursor)


def queue_position(session: Session, job: Job) -> int | None:
    """Return how many queued jobs are ahead of `job`, plus one, or None when it is not queued."""
    return queue_positions(session, [job]).get(job.id)


def queue_positions(session: Session, page: Sequence[Job]) -> dict[str, int]:
    """Return the queue position of each queued job of `page` by its id, in one query whatever the page's size.

    A job's position is how many queued jobs were submitted before it, plus one. Counted per job, a page of 50
    queued jobs was 50 queries, each a wait under gevent behind every other open request.
    """
    queued_ids = [job.id for job in page if job.status is JobStatus.QUEUED]
    if not queued_ids:
        return {}
    ahead = aliased(Job)
    count_ahead = (
        select(func.count())
        .select_from(ahead)
        .where(ahead.status == JobStatus.QUEUED, ahead.created_at < Job.created_at)
        .correlate(Job)
        .scalar_subquery()
    )
    rows = session.execute(select(Job.id, count_ahead).where(Job.id.in_(queued_ids))).all()
    return {job_id: int(count or 0) + 1 for job_id, count in rows}


def checkpoints_after(session: Session, job_id: str, after: int = 0, limit: int = CHECKPOINT_PAGE) -> Sequence[Checkpoint]:
    """Return the job's checkpoints past iteration `after`, in order."""
    query = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.iteration > after)
    return session.scalars(query.order_by(Checkpoint.iteration).limit(limit)).all()


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel a queued job at once, or ask a running one to stop at its next checkpoint."""
    now = utcnow()
    if job.status.finished:
        raise Conflict(f"job {job.id} has already {job.status}", code="job_finished")
    ended = rowcount(
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.CANCELED, cancel_requested=True, finished_at=now)
        )
    )
    if ended:
        deliveries.record_events(session, [job.id], WebhookEvent.CANCELED)
    else:
        session.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING).values(cancel_requested=True))
    session.refresh(job)
    return job


def delete_job(session: Session, storage: Store, job: Job) -> None:
    """Delete the job, its checkpoints and files, and the uploads no other job uses; commits.

    A running job is first asked to stop: its worker stops at its next checkpoint, or when it finds the row gone.
    """
    if job.status is JobStatus.RUNNING:
        request_cancel(session, job)
        session.commit()
    hashes = {job.content_sha256, *job.style_hashes}
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job.id))
    session.delete(job)
    session.flush()
    used = set(session.scalars(select(Job.content_sha256).where(Job.content_sha256.in_(hashes))).all())
    used.update(session.scalars(select(JobStyle.sha256).where(JobStyle.sha256.in_(hashes))).all())
    session.commit()
    storage.delete_job_files(job.id)
    for sha in hashes - used:
        storage.delete_upload(sha)


def upload_in_use(session: Session, sha256: str) -> bool:
    """Tell whether any job reads the upload with this hash."""
    as_content = select(Job.id).where(Job.content_sha256 == sha256)
    as_style = select(JobStyle.job_id).where(JobStyle.sha256 == sha256)
    return session.scalar(select(or_(as_content.exists(), as_style.exists()))) is True
