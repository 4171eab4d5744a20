"""The JSON shapes of jobs, their checkpoints and webhook deliveries, as every endpoint and the event stream send them.

Each is a model, written once: the endpoints send what it serialises, and the OpenAPI document describes it from
the same model (`api/openapi.py` `model_schemas`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, Field, WithJsonSchema
from sqlalchemy.orm import Session

from styleq.shared.adapters.models import Checkpoint as CheckpointRow
from styleq.shared.adapters.models import DeliveryStatus, WebhookDelivery, WebhookEvent
from styleq.shared.adapters.models import Job as JobRow
from styleq.shared.adapters.models import iso_timestamp as timestamp
from styleq.shared.domain.params import DEFAULT_PRESET, LAYER_NAME, MAX_SCALES, MAX_STYLES, PRESETS, Parameter, parameters, resolve_params
from styleq.shared.service.deliveries import deliveries_of_jobs
from styleq.shared.service.job_json import JobError, JobSummary, Timestamp, summary_fields
from styleq.shared.service.jobs import queue_positions

JOB_LINKS = ("checkpoints", "events", "result", "preview", "cancel", "content", "style")
# Where the document's components are; the parameters' own schema is made from their specs (`openapi.params_schema`).
COMPONENTS = "#/components/schemas/"


class Style(BaseModel):
    """One style picture of the job, in the order given."""

    weight: float = Field(gt=0, le=1, description="Its share of the blend; the shares sum to 1.")
    link: str = Field(description="Where to download it: /v1/jobs/{job_id}/styles/{index}.")


class Delivery(BaseModel):
    """One webhook delivery's record."""

    id: str = Field(description="The webhook-id header: the same on every attempt.")
    event: WebhookEvent
    status: DeliveryStatus
    attempts: int = Field(ge=0)
    last_status_code: int | None = Field(description="The receiver's HTTP status at the last attempt.")
    last_error: str | None
    next_attempt_at: Timestamp | None = Field(description="When it is tried next, while pending.")
    created_at: Timestamp
    last_attempt_at: Timestamp | None
    finished_at: Timestamp | None = Field(description="When it was delivered or given up.")


class Webhook(BaseModel):
    """Where the job's events are POSTed, which, and the latest 20 deliveries, newest first."""

    url: str
    events: list[WebhookEvent]
    deliveries: list[Delivery]


class Job(JobSummary):
    """A job as the API shows it."""

    # The parameters' schema is made from their specs; `allOf` around the reference keeps pydantic from resolving it.
    params: Annotated[
        dict[str, Any],
        WithJsonSchema(
            {
                "allOf": [{"$ref": COMPONENTS + "TransferParams"}],
                "description": "The resolved transfer parameters, with the coarse-to-fine schedule written out (scales, scale_iterations).",
            }
        ),
    ]
    styles: list[Style] = Field(
        min_length=1, max_length=MAX_STYLES, description="The style images in the order given (several for a blend)."
    )
    batch_size: int | None = Field(
        description="How many jobs the worker optimised together when it last started this one (1: alone); null until it starts."
    )
    batch_id: str | None = Field(description="Shared by the jobs of that batch; null when it ran alone.")
    worker: str | None
    resumed_from: int = Field(
        ge=0,
        description="The iteration of the saved state the current attempt resumed from (a worker lost or stopped); 0 when it started afresh.",
    )
    gpu: str | None
    cancel_requested: bool
    queue_position: int | None = Field(description="1 for the next job to run; null unless queued.")
    result_expired_at: Timestamp | None = Field(
        description="When the result was removed, its retention over (STYLEQ_KEEP_RESULTS_DAYS); the result then answers 410."
    )
    webhook: Webhook | None
    links: dict[str, str]


class Checkpoint(BaseModel):
    """One checkpoint's losses."""

    iteration: int
    elapsed_s: float
    content: float
    style: float
    tv: float
    total: float
    scale: float = Field(description="The fraction of the output size the picture had (coarse-to-fine); 1 in one pass.")


class JobPage(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class CheckpointList(BaseModel):
    checkpoints: list[Checkpoint]


class Error(BaseModel):
    """Every error's body."""

    error: JobError


def _numbers(kind: str, parameter: Parameter) -> dict[str, Any]:
    spec = parameter.spec
    bounds = {"minimum": spec.low, "maximum": spec.high} if spec.low is not None and spec.high is not None else {}
    return {"type": kind, **bounds}


# The JSON schema of a parameter of each kind (its annotation in TransferParams), before its description and default.
KIND_SCHEMAS = {
    "int": lambda parameter: _numbers("integer", parameter),
    "float": lambda parameter: _numbers("number", parameter),
    "bool": lambda _: {"type": "boolean"},
    "str": lambda parameter: {"type": "string", **({"enum": list(parameter.spec.choices)} if parameter.spec.choices else {})},
    "tuple[int, int] | int": lambda parameter: {
        "oneOf": [_numbers("integer", parameter), {"type": "array", "items": _numbers("integer", parameter), "minItems": 2, "maxItems": 2}]
    },
    "tuple[str, ...]": lambda _: {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "pattern": LAYER_NAME.pattern},
    },
    "tuple[float, ...] | str": lambda _: {
        "oneOf": [{"const": "auto"}, {"type": "array", "minItems": 1, "maxItems": MAX_SCALES, "items": {"type": "number"}}]
    },
    "tuple[int, ...] | None": lambda _: {"type": ["array", "null"], "items": {"type": "integer", "minimum": 1}},
    "tuple[float, ...] | None": lambda _: {"type": ["array", "null"], "items": {"type": "number", "exclusiveMinimum": 0}},
}


def params_schema() -> dict[str, Any]:
    """Return the schema of a job's parameters: every one with its kind, bounds or choices, description and default (the default preset's).

    Made when asked, from the parameters' specs (shared/domain/params.py), so a parameter added there is described here.
    """
    defaults = resolve_params({"preset": DEFAULT_PRESET}).to_dict()
    properties: dict[str, Any] = {}
    for parameter in parameters():
        schema = {"enum": list(PRESETS)} if parameter.name == "preset" else KIND_SCHEMAS[parameter.kind](parameter)
        properties[parameter.name] = {**schema, "description": parameter.spec.description, "default": defaults[parameter.name]}
    return {
        "type": "object",
        "description": (
            "A preset and the parameters that override it. Each is checked against its bounds here and, for a submission, against "
            "the service's limits (output size, iterations, device memory); a job's own shows its coarse-to-fine schedule written out."
        ),
        "properties": properties,
    }


# The models the document describes (`openapi.model_schemas`); their parts are described with them.
DOCUMENTED = (Job, JobPage, Checkpoint, CheckpointList, Error)


def job_location(job_id: str) -> str:
    """Return the job's URL path."""
    return f"/v1/jobs/{job_id}"


def job_payload(session: Session, job: JobRow) -> dict[str, Any]:
    """Return the job as the API shows it."""
    return job_payloads(session, [job])[0]


def job_payloads(session: Session, page: Sequence[JobRow]) -> list[dict[str, Any]]:
    """Return the jobs as the API shows them, reading their queue positions and deliveries in one query each for the page."""
    positions = queue_positions(session, page)
    deliveries = deliveries_of_jobs(session, [job.id for job in page if job.webhook_url is not None])
    return [_job(job, positions.get(job.id), deliveries.get(job.id, [])).model_dump(mode="json") for job in page]


def _job(job: JobRow, position: int | None, deliveries: Sequence[WebhookDelivery]) -> Job:
    location = job_location(job.id)
    return Job.model_validate(
        {
            **summary_fields(job),
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
    )


def webhook_payload(job: JobRow, deliveries: Sequence[WebhookDelivery]) -> dict[str, Any] | None:
    """Return the job's webhook and its latest deliveries, or None when it has none."""
    if job.webhook_url is None:
        return None
    return {"url": job.webhook_url, "events": job.webhook_events, "deliveries": [delivery_payload(delivery) for delivery in deliveries]}


def delivery_payload(delivery: WebhookDelivery) -> dict[str, Any]:
    """Return one delivery's record."""
    return {
        "id": delivery.message_id,
        "event": delivery.event,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "next_attempt_at": timestamp(delivery.next_attempt_at) if delivery.status is DeliveryStatus.PENDING else None,
        "created_at": timestamp(delivery.created_at),
        "last_attempt_at": timestamp(delivery.last_attempt_at),
        "finished_at": timestamp(delivery.finished_at),
    }


def styles_payload(job: JobRow, location: str) -> list[dict[str, Any]]:
    """Return the job's style pictures in order, each with its share of the blend (summing to 1) and its download link."""
    shares = resolve_params(job.params).style_shares(len(job.styles)) if len(job.styles) > 1 else (1.0,)
    return [{"weight": share, "link": f"{location}/styles/{index}"} for index, share in enumerate(shares)]


def checkpoint_payload(checkpoint: CheckpointRow) -> dict[str, Any]:
    """Return one checkpoint's losses, by the model's fields: read straight off the row (numbers, as the model says), as the
    checkpoint list and every event stream send many of them."""
    return {name: getattr(checkpoint, name) for name in Checkpoint.model_fields}
