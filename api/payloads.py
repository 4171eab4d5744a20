"""The JSON shapes of jobs and checkpoints, as every endpoint and the event stream send them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from shared.jobs import queue_position
from shared.models import Checkpoint, Job, JobStatus
from shared.params import resolve_params

JOB_LINKS = ("checkpoints", "events", "result", "preview", "cancel", "content", "style")


def timestamp(value: datetime | None) -> str | None:
    """Return `value` as ISO 8601 in UTC with a `Z`, or None."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def job_location(job_id: str) -> str:
    """Return the job's URL path."""
    return f"/v1/jobs/{job_id}"


def job_payload(session: Session, job: Job) -> dict[str, Any]:
    """Return the job as the API shows it."""
    losses = None
    if job.total_loss is not None:
        losses = {"content": job.content_loss, "style": job.style_loss, "tv": job.tv_loss, "total": job.total_loss}
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    location = job_location(job.id)
    return {
        "id": job.id,
        "status": job.status,
        "params": job.params,
        "styles": styles_payload(job, location),
        "progress": progress(job),
        "iteration": job.iteration,
        "iterations": job.iterations,
        "losses": losses,
        "elapsed_s": job.elapsed_s,
        "attempts": job.attempts,
        "batch_size": job.batch_size,
        "batch_id": job.batch_id,
        "worker": job.lease_owner,
        "gpu": job.gpu,
        "error": error,
        "cancel_requested": job.cancel_requested,
        "queue_position": queue_position(session, job),
        "created_at": timestamp(job.created_at),
        "started_at": timestamp(job.started_at),
        "finished_at": timestamp(job.finished_at),
        "links": {"self": location, **{name: f"{location}/{name}" for name in JOB_LINKS}},
    }


def styles_payload(job: Job, location: str) -> list[dict[str, Any]]:
    """Return the job's style pictures in order, each with its share of the blend (summing to 1) and its download link."""
    shares = resolve_params(job.params).style_shares(len(job.styles)) if len(job.styles) > 1 else (1.0,)
    return [{"weight": share, "link": f"{location}/styles/{index}"} for index, share in enumerate(shares)]


def progress(job: Job) -> float:
    """Return how far the job has got, from 0 to 1 (1 once it has succeeded)."""
    if job.status is JobStatus.SUCCEEDED:
        return 1.0
    return min(1.0, job.iteration / job.iterations) if job.iterations else 0.0


def checkpoint_payload(checkpoint: Checkpoint) -> dict[str, Any]:
    """Return one checkpoint's losses."""
    return {
        "iteration": checkpoint.iteration,
        "elapsed_s": checkpoint.elapsed_s,
        "content": checkpoint.content,
        "style": checkpoint.style,
        "tv": checkpoint.tv,
        "total": checkpoint.total,
        "scale": checkpoint.scale,
    }
