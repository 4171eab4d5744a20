"""The jobs resource: submit, list, show, follow checkpoints, cancel and delete."""

from __future__ import annotations

import hashlib
import logging

from flask import Blueprint, Response, jsonify, request

from shared import jobs
from shared.errors import InvalidInput, NotFound
from shared.models import Job, JobStatus
from shared.params import TransferParams

from .auth import current_key
from .payloads import checkpoint_payload, job_location, job_payload
from .services import db_session, services
from .uploads import read_idempotency_key, read_images, read_params

bp = Blueprint("jobs", __name__)
log = logging.getLogger(__name__)
STATUSES = tuple(status.value for status in JobStatus)


@bp.post("/jobs")
def submit_job() -> tuple[Response, int, dict[str, str]]:
    """Queue a transfer of the uploaded style onto the uploaded content."""
    settings = services().settings
    idempotency_key = read_idempotency_key(request.headers.get("Idempotency-Key"))
    images = read_images(request.files, settings.max_upload_bytes)
    params = read_params(request.form, request.files, settings)
    job, created = store_job(images["content"], images["style"], params, idempotency_key)
    if created:
        enqueue(job.id)
    body = job_payload(db_session(), job)
    return jsonify(body), 202 if created else 200, {"Location": job_location(job.id)}


def store_job(content: bytes, style: bytes, params: TransferParams, idempotency_key: str | None) -> tuple[Job, bool]:
    """Save the uploads and add the job in one committed transaction; leave no new file behind if that fails."""
    storage, session = services().storage, db_session()
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in (("content", content), ("style", style))}
    written = {sha for sha in hashes.values() if not storage.upload_path(sha).is_file()}
    try:
        storage.save_upload(content)
        storage.save_upload(style)
        job, created = jobs.create_job(session, current_key(), params, hashes["content"], hashes["style"], idempotency_key)
        session.commit()
    except BaseException:
        session.rollback()
        discard_uploads(written)
        raise
    if not created:
        # A repeated request: its files may differ from the first one's, and nothing uses them.
        discard_uploads(written)
        return job, False
    # A delete that saw these uploads unused just before our commit may have removed them since.
    for data in (content, style):
        storage.save_upload(data)
    return job, True


def discard_uploads(hashes: set[str]) -> None:
    """Remove the uploads among `hashes` that no job uses."""
    storage, session = services().storage, db_session()
    try:
        for sha in hashes:
            if not jobs.upload_in_use(session, sha):
                storage.delete_upload(sha)
        session.rollback()
    except Exception:
        log.warning("could not clean up uploads %s", sorted(hashes), exc_info=True)


def enqueue(job_id: str) -> None:
    """Send the committed job to the broker and record it; a failure leaves it queued for the sweeper."""
    try:
        services().queue.send(job_id)
    except Exception:
        log.warning("could not send job %s to the broker; the sweeper will send it later", job_id, exc_info=True)
        return
    session = db_session()
    try:
        jobs.mark_enqueued(session, job_id)
        session.commit()
    except Exception:
        session.rollback()
        log.warning("job %s was sent but could not be marked as enqueued", job_id, exc_info=True)


@bp.get("/jobs")
def list_jobs() -> Response:
    """List the client's jobs (every job for an admin), newest first."""
    session, key = db_session(), current_key()
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, got {status!r}", code="invalid_query")
    limit = int_argument("limit", 20, 1, 100)
    cursor = request.args.get("cursor") or None
    if cursor is not None:
        try:
            jobs.get_job(session, key, cursor)
        except NotFound:
            raise InvalidInput(f"cursor {cursor!r} is not a job of this client", code="invalid_query") from None
    page = jobs.list_jobs(session, key, status=status, cursor=cursor, limit=limit)
    return jsonify(jobs=[job_payload(session, job) for job in page.jobs], next_cursor=page.next_cursor)


@bp.get("/jobs/<job_id>")
def show_job(job_id: str) -> Response:
    """Show one job."""
    session = db_session()
    return jsonify(job_payload(session, jobs.get_job(session, current_key(), job_id)))


@bp.get("/jobs/<job_id>/checkpoints")
def list_checkpoints(job_id: str) -> Response:
    """List the job's loss checkpoints past iteration `after`."""
    session = db_session()
    job = jobs.get_job(session, current_key(), job_id)
    after = int_argument("after", 0, 0, 10**9)
    limit = int_argument("limit", 1000, 1, 1000)
    checkpoints = jobs.checkpoints_after(session, job.id, after, limit)
    return jsonify(checkpoints=[checkpoint_payload(checkpoint) for checkpoint in checkpoints])


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> tuple[Response, int]:
    """Cancel a queued job now, or ask a running one to stop at its next checkpoint."""
    session = db_session()
    job = jobs.request_cancel(session, jobs.get_job(session, current_key(), job_id))
    session.commit()
    return jsonify(job_payload(session, job)), 202


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str) -> tuple[str, int]:
    """Delete the job, its checkpoints and files, and the uploads no other job uses."""
    session, storage = db_session(), services().storage
    job = jobs.get_job(session, current_key(), job_id)
    if job.state is JobStatus.RUNNING:
        # The worker stops at its next checkpoint; it also stops when it finds the row gone.
        jobs.request_cancel(session, job)
        session.commit()
    unused = jobs.delete_job(session, job)
    session.commit()
    storage.delete_job_files(job_id)
    for sha in unused:
        storage.delete_upload(sha)
    return "", 204


def int_argument(name: str, default: int, low: int, high: int) -> int:
    """Return the query argument `name` as an integer from `low` to `high`."""
    text = request.args.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}, got {text!r}", code="invalid_query")
    return value
