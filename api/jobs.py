"""The jobs resource: submit, list, show, follow checkpoints, cancel and delete."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request

from styleq.shared.domain.errors import InvalidInput
from styleq.shared.service import jobs

from .auth import current_key
from .backends import backends, db_session
from .payloads import checkpoint_payload, job_location, job_payload, job_payloads
from .request_context import concerns_job
from .uploads import device_memory, read_idempotency_key, read_images, read_params, read_webhook

bp = Blueprint("jobs", __name__)
# The bounds of the integer query arguments (api/openapi.py states the same): pages of jobs and of checkpoints,
# and the iteration checkpoints are listed after.
MAX_JOBS_PAGE = 100
MAX_CHECKPOINTS_PAGE = 1000
MAX_CHECKPOINT_AFTER = 10**9
log = logging.getLogger(__name__)


@bp.post("/jobs")
def submit_job() -> tuple[Response, int, dict[str, str]]:
    """Queue a transfer of the uploaded style (or a blend of several) onto the uploaded content."""
    resources, session = backends(), db_session()
    idempotency_key = read_idempotency_key(request.headers.get("Idempotency-Key"))
    pictures = read_images(request.files, resources.settings.max_upload_bytes)
    params = read_params(
        request.form,
        request.files,
        resources.settings,
        pictures.content,
        len(pictures.styles),
        device_memory_bytes=device_memory(session, resources.settings),
    )
    webhook = read_webhook(request.form, resources.settings)
    job, created = jobs.submit_job(
        session,
        resources.storage,
        current_key(),
        pictures.content.data,
        [style.data for style in pictures.styles],
        params,
        idempotency_key,
        max_active_jobs=resources.settings.max_active_jobs,
        webhook=webhook,
    )
    concerns_job(job.id)
    if created:
        log.info("job %s queued for key %r", job.id, current_key().name)
        jobs.enqueue_job(session, resources.queue.send, job.id)
    return jsonify(job_payload(session, job)), 202 if created else 200, {"Location": job_location(job.id)}


@bp.get("/jobs")
def list_jobs() -> Response:
    """List the client's jobs (every job for an admin), newest first."""
    session = db_session()
    limit = int_argument("limit", 20, 1, MAX_JOBS_PAGE)
    status, cursor = query_argument("status"), query_argument("cursor")
    page = jobs.list_jobs(session, current_key(), status=status, cursor=cursor, limit=limit)
    return jsonify(jobs=job_payloads(session, page.jobs), next_cursor=page.next_cursor)


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
    after = int_argument("after", 0, 0, MAX_CHECKPOINT_AFTER)
    limit = int_argument("limit", MAX_CHECKPOINTS_PAGE, 1, MAX_CHECKPOINTS_PAGE)
    checkpoints = jobs.checkpoints_after(session, job.id, after, limit)
    return jsonify(checkpoints=[checkpoint_payload(checkpoint) for checkpoint in checkpoints])


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> tuple[Response, int]:
    """Cancel a queued job now, or ask a running one to stop at its next checkpoint."""
    session = db_session()
    job = jobs.request_cancel(session, jobs.get_job(session, current_key(), job_id))
    session.commit()
    log.info("job %s %s", job.id, "canceled" if job.status.finished else "asked to stop at its next checkpoint")
    if job.status.finished:
        # A queued job that ran before (handed back, or its worker lost) has a saved state it will never resume from.
        backends().storage.delete_states(job.id)
    return jsonify(job_payload(session, job)), 202


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str) -> tuple[str, int]:
    """Delete the job, its checkpoints and files, and the uploads no other job uses."""
    session = db_session()
    jobs.delete_job(session, backends().storage, jobs.get_job(session, current_key(), job_id))
    log.info("job %s deleted with its files", job_id)
    return "", 204


def query_argument(name: str) -> str | None:
    """Return the query argument `name`, None when absent; given empty or more than once, it is a 400."""
    values = request.args.getlist(name)
    if not values:
        return None
    if len(values) > 1 or not values[0].strip():
        raise InvalidInput(f"{name} must be given once, with a value; got {values!r}", code="invalid_query")
    return values[0]


def int_argument(name: str, default: int, low: int, high: int) -> int:
    """Return the query argument `name` as an integer from `low` to `high`."""
    text = query_argument(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}, got {text!r}", code="invalid_query")
    return value
