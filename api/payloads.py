"""The JSON shapes of jobs, their checkpoints and webhook deliveries, as every endpoint and the event stream send them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from styleq.shared.adapters.models import Checkpoint, DeliveryStatus, Job, WebhookDelivery
from styleq.shared.adapters.models import iso_timestamp as timestamp
from styleq.shared.domain.params import resolve_params
from styleq.shared.service.deliveries import deliveries_of_jobs, job_summary
from styleq.shared.service.jobs import queue_positions

JOB_LINKS = ("checkpoints", "events", "result", "preview", "cancel", "content", "style")


def job_location(job_id: str) -> str:
    """Return the job's URL path."""
    return f"/v1/jobs/{job_id}"


def job_payload(session: Session, job: Job) -> dict[str, Any]:
    """Return the job as the API shows it."""
    return job_payloads(session, [job])[0]


def job_payloads(session: Session, page: Sequence[Job]) -> list[dict[str, Any]]:
    """Return the jobs as the API shows them, reading their queue positions and deliveries in one query each for the page."""
    positions = queue_positions(session, page)
    deliveries = deliveries_of_jobs(session, [job.id for job in page if job.webhook_url is not None])
    return [_job_payload(job, positions.get(job.id), deliveries.get(job.id, [])) for job in page]


def _job_payload(job: Job, position: int | None, deliveries: Sequence[WebhookDelivery]) -> dict[str, Any]:
    location = job_location(job.id)
    return {
        **job_summary(job),
        "params": job.params,
        "styles": styles_payload(job, location),
        "batch_size": job.batch_size,
        "batch_id": job.batch_id,
        "worker": job.lease_owner,
        # Where the current attempt picked up: 0 for a first start, else the iteration of the saved state it resumed from.
        "resumed_from": job.resumed_iteration,
        "gpu": job.gpu,
        "cancel_requested": job.cancel_requested,
        "queue_position": position,
        "result_expired_at": timestamp(job.result_expired_at),
        "webhook": webhook_payload(job, deliveries),
        "links": {"self": location, **{name: f"{location}/{name}" for name in JOB_LINKS}},
    }


def webhook_payload(job: Job, deliveries: Sequence[WebhookDelivery]) -> dict[str, Any] | None:
    """Return the job's webhook and its latest deliveries, or None when it has none."""
    if job.webhook_url is None:
        return None
    return {
        "url": job.webhook_url,
        "events": job.webhook_events,
        "deliveries": [delivery_payload(delivery) for delivery in deliveries],
    }


def delivery_payload(delivery: WebhookDelivery) -> dict[str, Any]:
    """Return one delivery's record."""
    return {
        "id": delivery.message_id,
        "event": delivery.event.value,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "next_attempt_at": timestamp(delivery.next_attempt_at) if delivery.status is DeliveryStatus.PENDING else None,
        "created_at": timestamp(delivery.created_at),
        "last_attempt_at": timestamp(delivery.last_attempt_at),
        "finished_at": timestamp(delivery.finished_at),
    }


def styles_payload(job: Job, location: str) -> list[dict[str, Any]]:
    """Return the job's style pictures in order, each with its share of the blend (summing to 1) and its download link."""
    shares = resolve_params(job.params).style_shares(len(job.styles)) if len(job.styles) > 1 else (1.0,)
    return [{"weight": share, "link": f"{location}/styles/{index}"} for index, share in enumerate(shares)]


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
