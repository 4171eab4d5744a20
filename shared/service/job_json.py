"""The JSON a job is told in, written once as models that both serialise it and describe it (the API's OpenAPI document
is made from them): the summary every webhook event carries here, the API's whole job in `api/payloads.py`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from ..adapters.models import Job as JobRow
from ..adapters.models import JobStatus, WebhookEvent, iso_timestamp

# A moment, as `iso_timestamp` writes it (ISO 8601 in UTC with a Z).
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class Losses(BaseModel):
    """The losses at a checkpoint, each weighted as it enters the total."""

    content: float
    style: float
    tv: float
    total: float


class JobError(BaseModel):
    """Why a job failed, or what a request did wrong."""

    code: str = Field(description="Stable machine-readable code, e.g. invalid_params.")
    message: str = Field(description="What went wrong, for a person.")


class JobSummary(BaseModel):
    """A job's state, as its webhook events carry it; the API's `Job` holds it and more."""

    id: str
    status: JobStatus
    progress: float = Field(ge=0, le=1)
    iteration: int
    iterations: int
    losses: Losses | None = Field(description="At the latest checkpoint; null before the first.")
    elapsed_s: float | None
    attempts: int
    error: JobError | None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None


def summary_fields(job: JobRow) -> dict[str, Any]:
    """Return the values of `JobSummary`'s fields for `job`, for it and the models that extend it."""
    losses = None
    if job.total_loss is not None:  # the four are written together, at each checkpoint
        losses = {"content": job.content_loss, "style": job.style_loss, "tv": job.tv_loss, "total": job.total_loss}
    return {
        "id": job.id,
        "status": job.status,
        "progress": job.progress,
        "iteration": job.iteration,
        "iterations": job.iterations,
        "losses": losses,
        "elapsed_s": job.elapsed_s,
        "attempts": job.attempts,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "created_at": iso_timestamp(job.created_at),
        "started_at": iso_timestamp(job.started_at),
        "finished_at": iso_timestamp(job.finished_at),
    }


class EventLinks(BaseModel):
    self: str
    result: str


class EventData(JobSummary):
    """The job as it was when the event happened, with where to find it and its result."""

    links: EventLinks


class WebhookEventBody(BaseModel):
    """The body of each webhook delivery: what happened, when, and the job then."""

    type: str = Field(json_schema_extra={"enum": [f"job.{event.value}" for event in WebhookEvent]})
    timestamp: Timestamp = Field(description="When the event happened (webhook-timestamp says when it was sent).")
    data: EventData
