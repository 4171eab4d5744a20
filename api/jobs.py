"""The jobs resource: submit, list, show, follow checkpoints, cancel and delete."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request

from styleq.shared.adapters.models import JobStatus
from styleq.shared.domain.errors import InvalidInput
from styleq.shared.domain.params import MAX_STYLE_WEIGHT, MAX_STYLES
from styleq.shared.service import jobs
from styleq.shared.service.webhooks import DEFAULT_EVENTS, EVENTS, MAX_URL_LENGTH

from .auth import current_key
from .backends import backends, db_session
from .documented import AUTH, JSON, REF, RETRY_AFTER, described, error, job_operation, json_body, query
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
@described(
    {
        "summary": "Submit a style-transfer job.",
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": (
                    "Repeating a key with the same pictures and params returns the job it first created (200) instead of a "
                    "new one; with others it is refused (422 idempotency_key_reused)."
                ),
                "schema": {"type": "string", "maxLength": 200},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["content", "style"],
                        "properties": {
                            "content": {"type": "string", "contentEncoding": "binary", "description": "The picture to repaint."},
                            "style": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": MAX_STYLES,
                                "items": {"type": "string", "contentEncoding": "binary"},
                                "description": (
                                    f"The picture whose style to take: the field once, or repeated (up to {MAX_STYLES} times, in order) "
                                    "for a blend of their styles."
                                ),
                            },
                            "style_weights": {
                                "type": "string",
                                "description": (
                                    f"Each style's share of a blend, comma-separated in the styles' order, e.g. 0.7,0.3: positive numbers up to "
                                    f"{MAX_STYLE_WEIGHT:g}, normalised to sum 1. Default: equal shares. Also accepted as params.style_weights (a list), not both."
                                ),
                            },
                            "params": {
                                "type": "string",
                                "contentMediaType": JSON,
                                "contentSchema": {"$ref": REF + "schemas/TransferParams"},
                                "description": (
                                    'A JSON object: a preset and overrides, e.g. {"preset": "seed", "size": [300, 450]}, '
                                    '{"style_loss": "moments"} or {"format": "webp", "quality": 90}.'
                                ),
                            },
                            "webhook_url": {
                                "type": "string",
                                "maxLength": MAX_URL_LENGTH,
                                "description": "An http(s) URL to POST the job's events to (Standard Webhooks, signed with the key's webhook secret). "
                                "Its host must resolve only to public addresses (unless the service allows others).",
                            },
                            "webhook_events": {
                                "type": "string",
                                "description": f"Which events, comma-separated, of {', '.join(EVENTS)}; default {','.join(DEFAULT_EVENTS)}.",
                            },
                        },
                    }
                }
            },
        },
        "responses": {
            "202": json_body("Queued.", "Job", {"Location": {"schema": {"type": "string"}}}),
            "200": json_body("The job an earlier request with this Idempotency-Key created.", "Job"),
            "400": error(
                "missing_file, unknown_field (a file field other than content and style), too_many_files (two content images, or "
                f"over {MAX_STYLES} style images), invalid_image, invalid_params (not a JSON object), invalid_style_weights (given twice) "
                "or invalid_idempotency_key."
            ),
            "413": error("too_large: an upload over the size limit (each file), or a body over the limit of all files together."),
            "422": error(
                "invalid_params: a parameter is unknown, out of range or over the service's limits; too_large_for_memory: the output needs more memory than any live "
                "worker's device holds (the message names the largest size that fits); weights_unavailable; invalid_style_weights: not positive "
                "numbers, or not one per style image; idempotency_key_reused: the Idempotency-Key was used before for other pictures, "
                "params or webhook; invalid_webhook_url: not http(s), with credentials, unresolvable, or resolving to a loopback, private, "
                "link-local, multicast, reserved or unspecified address; or invalid_webhook_events."
            ),
            **AUTH,
            "429": {
                **error(
                    "too_many_requests: over the key's requests per minute; or too_many_active_jobs: the key already has "
                    "as many jobs queued or running as it may. Nothing was stored."
                ),
                "headers": {"Retry-After": RETRY_AFTER},
            },
        },
    }
)
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
@described(
    {
        "summary": "List the client's jobs (all jobs for an admin key), newest first.",
        "parameters": [
            query("status", "Only jobs in this status.", {"type": "string", "enum": [status.value for status in JobStatus]}),
            query("cursor", "The next_cursor of the page before.", {"type": "string", "minLength": 1}),
            query("limit", "Jobs per page.", {"type": "integer", "minimum": 1, "maximum": MAX_JOBS_PAGE, "default": 20}),
        ],
        "responses": {"200": json_body("A page of jobs.", "JobPage"), "400": error("invalid_query."), **AUTH},
    }
)
def list_jobs() -> Response:
    """List the client's jobs (every job for an admin), newest first."""
    session = db_session()
    limit = int_argument("limit", 20, 1, MAX_JOBS_PAGE)
    status, cursor = query_argument("status"), query_argument("cursor")
    page = jobs.list_jobs(session, current_key(), status=status, cursor=cursor, limit=limit)
    return jsonify(jobs=job_payloads(session, page.jobs), next_cursor=page.next_cursor)


@bp.get("/jobs/<job_id>")
@described(job_operation("Show a job.", {"200": json_body("The job.", "Job")}))
def show_job(job_id: str) -> Response:
    """Show one job."""
    session = db_session()
    return jsonify(job_payload(session, jobs.get_job(session, current_key(), job_id)))


@bp.get("/jobs/<job_id>/checkpoints")
@described(
    job_operation(
        "List the job's loss checkpoints.",
        {"200": json_body("Checkpoints in iteration order.", "CheckpointList"), "400": error("invalid_query.")},
        [
            query(
                "after",
                "Only checkpoints past this iteration.",
                {"type": "integer", "minimum": 0, "maximum": MAX_CHECKPOINT_AFTER, "default": 0},
            ),
            query(
                "limit",
                "At most this many.",
                {"type": "integer", "minimum": 1, "maximum": MAX_CHECKPOINTS_PAGE, "default": MAX_CHECKPOINTS_PAGE},
            ),
        ],
    )
)
def list_checkpoints(job_id: str) -> Response:
    """List the job's loss checkpoints past iteration `after`."""
    session = db_session()
    job = jobs.get_job(session, current_key(), job_id)
    after = int_argument("after", 0, 0, MAX_CHECKPOINT_AFTER)
    limit = int_argument("limit", MAX_CHECKPOINTS_PAGE, 1, MAX_CHECKPOINTS_PAGE)
    checkpoints = jobs.checkpoints_after(session, job.id, after, limit)
    return jsonify(checkpoints=[checkpoint_payload(checkpoint) for checkpoint in checkpoints])


@bp.post("/jobs/<job_id>/cancel")
@described(
    job_operation(
        "Cancel a queued job now, or ask a running one to stop at its next checkpoint.",
        {"202": json_body("The job after the request.", "Job"), "409": error("job_finished.")},
    )
)
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
@described(
    job_operation("Delete a job, its checkpoints and files (a running job is canceled first).", {"204": {"description": "Deleted."}})
)
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
