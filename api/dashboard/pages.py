"""The client's pages: the jobs list, one job, the new-job form, and running a job again."""

from __future__ import annotations

import json
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response  # what redirect() makes; flask's Response is one

from styleq.shared.adapters.models import Job, JobStatus
from styleq.shared.adapters.outputs import job_format, read_metadata
from styleq.shared.domain.errors import InvalidInput, StyleqError
from styleq.shared.domain.params import DEFAULT_PRESET, MAX_STYLE_WEIGHT, MAX_STYLES, PRESETS, parameters, resolve_params
from styleq.shared.service import jobs
from styleq.shared.service.deliveries import deliveries_of
from styleq.shared.service.webhooks import DEFAULT_EVENTS, AddressPolicy, Subscription, check_url

from ..auth import current_key
from ..backends import backends, db_session
from ..errors import STATUS
from ..payloads import job_payload
from ..uploads import check_image, device_memory, read_params
from . import bp, formatting, thumbnails  # noqa: F401 (formatting and thumbnails register filters and a route on bp)
from .queries import owner_names, status_counts

PAGE_SIZE = 20
# How the form offers a parameter, by its kind (its annotation in TransferParams): kinds not here are not offered
# on the form (size has its own two fields; style shares come with the style pictures).
FORM_CONTROLS = {
    "int": {"control": "number", "step": "1", "inputmode": "numeric"},
    "float": {"control": "number", "step": "any", "inputmode": "decimal"},
    "str": {"control": "select"},
    "bool": {"control": "checkbox"},
    # "auto", or fractions rising to 1, comma-separated (the API checks the rest).
    "tuple[float, ...] | str": {"control": "scales", "pattern": r"\s*(auto|[0-9.]+(\s*,\s*[0-9.]+)*)\s*"},
    "tuple[str, ...]": {"control": "names", "pattern": r"\s*[a-z0-9_]+(\s*,\s*[a-z0-9_]+)*\s*"},
}


def form_fields(max_iterations: int) -> list[dict[str, Any]]:
    """Return the new-job form's fields, one per parameter whose spec puts it on the form, in the specs' order.

    Each has its name, label, section ("main" or "more"), control and bounds; a number's bounds are written
    before its hint where they are a person's numbers (iterations: this service's own limit).
    """
    fields = []
    for parameter in parameters():
        spec = parameter.spec
        if spec.form is None or (parameter.kind not in FORM_CONTROLS) or (parameter.kind == "str" and not spec.choices):
            continue
        low, high = spec.low, (max_iterations if parameter.name == "iterations" else spec.high)
        # Bounds a person reads at a glance (not a learning rate's 1e-06, nor a weight's "at least 0").
        bounds = f"{low:g} to {high:g}" if low is not None and high is not None and (low == 0 or low >= 0.01) and high <= 1e5 else ""
        fields.append(
            {
                "name": parameter.name,
                "label": spec.label,
                "section": spec.form,
                **FORM_CONTROLS[parameter.kind],
                "min": low,
                "max": high,
                "choices": [(choice, spec.words_for(choice)) for choice in spec.choices],
                "hint": ": ".join(part for part in (bounds, spec.hint) if part),
            }
        )
    return fields


@bp.get("/")
def index() -> Response:
    """Open the jobs list."""
    return redirect(url_for("dashboard.list_jobs"))


@bp.get("/jobs")
def list_jobs() -> str:
    """List the client's jobs (every job for an admin), newest first, optionally of one status."""
    session, key = db_session(), current_key()
    status, cursor = request.args.get("status") or None, request.args.get("cursor") or None
    page = jobs.list_jobs(session, key, status=status, cursor=cursor, limit=PAGE_SIZE)
    positions = jobs.queue_positions(session, page.jobs)
    names = owner_names(session, (job.owner_id for job in page.jobs)) if key.is_admin else {}
    return render_template(
        "jobs.html",
        page=page,
        status=status,
        cursor=cursor,
        statuses=jobs.STATUSES,
        counts=status_counts(session, key),
        positions=positions,
        names=names,
    )


@bp.get("/jobs/<job_id>")
def show_job(job_id: str) -> str:
    """Show one job: its images, parameters, progress, loss history and webhook deliveries (the page's script follows it live)."""
    session, key = db_session(), current_key()
    job = jobs.get_job(session, key, job_id)
    owner = owner_names(session, [job.owner_id]).get(job.owner_id, "") if key.is_admin else ""
    deliveries = deliveries_of(session, job.id) if job.webhook_url else []
    return render_template(
        "job.html",
        job=job,
        payload=job_payload(session, job),
        owner=owner,
        deliveries=deliveries,
        ran_precision=result_precision(job),
        removed_uploads=removed_uploads(job),
    )


def removed_uploads(job: Job) -> set[str]:
    """Return the hashes of the job's uploads no longer in storage (the retention sweep removed them): the page says so instead of a broken picture."""
    storage = backends().storage
    return {sha for sha in (job.content_sha256, *job.style_hashes) if not storage.has_upload(sha)}


def result_precision(job: Job) -> str | None:
    """Return the precision ("fp32" or "bf16") the worker made the job's result in, as it wrote inside the file; None where unknown."""
    if job.status != JobStatus.SUCCEEDED or job.result_expired_at is not None:
        return None
    try:
        # The metadata is in the file's header; the whole file is read, as an object store serves it whole.
        metadata = read_metadata(backends().storage.read_job_file(job.id, job_format(job.params).file_name))
    except OSError:  # missing or unreadable: the page then says what "auto" means instead
        return None
    precision = (metadata or {}).get("precision")
    return precision if precision in ("fp32", "bf16") else None


@bp.get("/jobs/new")
def new_job() -> str:
    """Show the form that submits a job (the page's script sends it to POST /v1/jobs)."""
    settings = backends().settings
    presets = {name: resolve_params({"preset": name}).to_dict() for name in PRESETS}
    ranges = {
        parameter.name: (parameter.spec.low, parameter.spec.high)
        for parameter in parameters()
        if parameter.spec.low is not None and parameter.spec.high is not None
    }
    max_iterations = min(settings.max_iterations, int(ranges["iterations"][1]))
    limits = {
        "max_size": settings.max_size,
        "max_iterations": max_iterations,
        "max_upload_bytes": settings.max_upload_bytes,
        "ranges": ranges,
    }
    return render_template(
        "new_job.html",
        presets=presets,
        limits=limits,
        fields=form_fields(max_iterations),
        default_preset=DEFAULT_PRESET,
        max_styles=MAX_STYLES,
        max_style_weight=MAX_STYLE_WEIGHT,
    )


@bp.post("/jobs/<job_id>/rerun")
def rerun_job(job_id: str) -> Response:
    """Queue a new job with the same uploads, parameters and webhook as this one."""
    session, key, resources = db_session(), current_key(), backends()
    original = jobs.get_job(session, key, job_id)
    try:
        content, *styles = (resources.storage.read_upload(sha) for sha in (original.content_sha256, *original.style_hashes))
        params = read_params(
            MultiDict({"params": json.dumps(original.params)}),
            {},
            resources.settings,
            check_image("content", content),
            len(styles),
            device_memory_bytes=device_memory(session, resources.settings),
        )
        webhook = None
        if original.webhook_url is not None:
            # Checked again: the address its name resolves to, or the service's rule, may have changed since.
            url = check_url(original.webhook_url, AddressPolicy.from_settings(resources.settings))
            webhook = Subscription(url, tuple(original.webhook_events or DEFAULT_EVENTS))
    except FileNotFoundError:
        flash("The images of this job are no longer stored, so it cannot run again; submit them anew.", "error")
        return redirect(url_for("dashboard.show_job", job_id=original.id))
    except InvalidInput as error:
        flash(f"This job cannot run again on this service: {error.message}", "error")
        return redirect(url_for("dashboard.show_job", job_id=original.id))
    job, _ = jobs.submit_job(session, resources.storage, key, content, styles, params, webhook=webhook)
    jobs.enqueue_job(session, resources.queue.send, job.id)
    flash(f"Queued a new run of job {original.id[:8]} with the same images and parameters.")
    return redirect(url_for("dashboard.show_job", job_id=job.id))


@bp.errorhandler(StyleqError)
def show_service_error(error: StyleqError) -> tuple[str, int]:
    """Show a service error (an unknown job, a bad request) as a page."""
    status = next((status for cls, status in STATUS if isinstance(error, cls)), 400)
    return render_template("error.html", status=status, message=error.message), status


@bp.errorhandler(HTTPException)
def show_http_error(error: HTTPException) -> tuple[str, int]:
    """Show Werkzeug's errors (403, 404, 400 ...) as a page."""
    return render_template("error.html", status=error.code or 500, message=error.description or error.name), error.code or 500
