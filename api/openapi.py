"""The OpenAPI 3.1 description of the API, checked against the routes by a test; a job's parameters are described from their specs."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic.json_schema import models_json_schema

from styleq.shared.adapters.models import JobStatus
from styleq.shared.adapters.outputs import FORMATS
from styleq.shared.domain.params import (
    DEFAULT_PRESET,
    MAX_SCALES,
    MAX_STYLE_WEIGHT,
    MAX_STYLES,
    PRESETS,
    Parameter,
    parameters,
    resolve_params,
)
from styleq.shared.service.job_json import WebhookEventBody
from styleq.shared.service.webhooks import DEFAULT_EVENTS, EVENTS, MAX_URL_LENGTH

from .auth import CSRF_HEADER
from .jobs import MAX_CHECKPOINT_AFTER, MAX_CHECKPOINTS_PAGE, MAX_JOBS_PAGE
from .payloads import DOCUMENTED

bp = Blueprint("openapi", __name__)

JSON = "application/json"
REF = "#/components/"


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
        "items": {"type": "string", "pattern": "^(conv|relu)[1-5]_[1-4]$|^pool[1-5]$"},
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


def model_schemas() -> dict[str, Any]:
    """Return the components of the models the API serialises (api/payloads.py, a webhook's body), each described once there."""
    _, schemas = models_json_schema(
        [(model, "serialization") for model in (*DOCUMENTED, WebhookEventBody)], ref_template=REF + "schemas/{model}"
    )
    return dict(schemas["$defs"])


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": REF + "schemas/Error"}}}}


def _json(description: str, schema: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": {"$ref": REF + "schemas/" + schema}}}}
    if headers:
        response["headers"] = headers
    return response


def _image(description: str, mimetypes: list[str], cache: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"ETag": {"schema": {"type": "string"}}, "Cache-Control": {"schema": {"type": "string", "example": cache}}},
        "content": {mimetype: {"schema": {"type": "string", "contentEncoding": "binary"}} for mimetype in mimetypes},
    }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "description": "The job's id.", "schema": {"type": "string"}}
# The types an upload may have, served back as they came.
UPLOAD_MIMETYPES = ["image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff"]
# The types a result may have: one per `format` (shared/adapters/outputs.py FORMATS).
RESULT_MIMETYPES = [output.media_type for output in FORMATS.values()]
# Every /v1 operation needs a key, and counts against the key's requests per minute.
AUTH = {"401": {"$ref": REF + "responses/Unauthorized"}, "429": {"$ref": REF + "responses/TooManyRequests"}}
UNKNOWN = {"404": _error("No job with this id belongs to the client.")}
NOT_MODIFIED = {"304": {"description": "Not modified (If-None-Match matched the ETag)."}}
RETRY_AFTER = {"description": "Seconds to wait before trying again.", "schema": {"type": "integer", "minimum": 1}}
# An upload's answers: it, or 410 once the retention sweep has removed it (the job's record stays).
UPLOAD_RESPONSES = {
    "200": _image("The upload, in its own format.", UPLOAD_MIMETYPES, "private, max-age=86400, immutable"),
    **NOT_MODIFIED,
    "410": _error("upload_expired: the upload was removed when its retention ended (after the last job using it); the job's record stays."),
}


def _job_operation(summary: str, responses: dict[str, Any], parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"summary": summary, "parameters": [JOB_ID, *(parameters or [])], "responses": {**responses, **AUTH, **UNKNOWN}}


# Described by hand: what no model serialises (a health answer's open checks, the event stream's events).
SCHEMAS: dict[str, Any] = {
    "Health": {
        "type": "object",
        "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]}, "checks": {"type": "object"}},
    },
    # The data of each Server-Sent Event of /v1/jobs/{job_id}/events (a JSON object on its `data:` line).
    "StatusEvent": {
        "$ref": REF + "schemas/Job",
        "description": "event: status (id: the last checkpoint's iteration). The job, first and at each change.",
    },
    "CheckpointEvent": {
        "$ref": REF + "schemas/Checkpoint",
        "description": "event: checkpoint (id: its iteration). One per checkpoint, in order.",
    },
    "EndEvent": {
        "type": "object",
        "description": "event: end. The last event: the job finished, or was deleted (status null).",
        "required": ["status"],
        "properties": {
            "status": {"type": ["string", "null"], "enum": [*(status.value for status in JobStatus), None]},
            "reason": {"type": "string"},
        },
    },
}

SUBMIT = {
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
        "202": _json("Queued.", "Job", {"Location": {"schema": {"type": "string"}}}),
        "200": _json("The job an earlier request with this Idempotency-Key created.", "Job"),
        "400": _error(
            "missing_file, unknown_field (a file field other than content and style), too_many_files (two content images, or "
            f"over {MAX_STYLES} style images), invalid_image, invalid_params (not a JSON object), invalid_style_weights (given twice) "
            "or invalid_idempotency_key."
        ),
        "413": _error("too_large: an upload over the size limit (each file), or a body over the limit of all files together."),
        "422": _error(
            "invalid_params: a parameter is unknown, out of range or over the service's limits; too_large_for_memory: the output needs more memory than any live "
            "worker's device holds (the message names the largest size that fits); weights_unavailable; invalid_style_weights: not positive "
            "numbers, or not one per style image; idempotency_key_reused: the Idempotency-Key was used before for other pictures, "
            "params or webhook; invalid_webhook_url: not http(s), with credentials, unresolvable, or resolving to a loopback, private, "
            "link-local, multicast, reserved or unspecified address; or invalid_webhook_events."
        ),
        **AUTH,
        "429": {
            **_error(
                "too_many_requests: over the key's requests per minute; or too_many_active_jobs: the key already has "
                "as many jobs queued or running as it may. Nothing was stored."
            ),
            "headers": {"Retry-After": RETRY_AFTER},
        },
    },
}

PATHS: dict[str, Any] = {
    "/v1/jobs": {
        "post": SUBMIT,
        "get": {
            "summary": "List the client's jobs (all jobs for an admin key), newest first.",
            "parameters": [
                _query("status", "Only jobs in this status.", {"type": "string", "enum": [status.value for status in JobStatus]}),
                _query("cursor", "The next_cursor of the page before.", {"type": "string", "minLength": 1}),
                _query("limit", "Jobs per page.", {"type": "integer", "minimum": 1, "maximum": MAX_JOBS_PAGE, "default": 20}),
            ],
            "responses": {"200": _json("A page of jobs.", "JobPage"), "400": _error("invalid_query."), **AUTH},
        },
    },
    "/v1/jobs/{job_id}": {
        "get": _job_operation("Show a job.", {"200": _json("The job.", "Job")}),
        "delete": _job_operation(
            "Delete a job, its checkpoints and files (a running job is canceled first).", {"204": {"description": "Deleted."}}
        ),
    },
    "/v1/jobs/{job_id}/checkpoints": {
        "get": _job_operation(
            "List the job's loss checkpoints.",
            {"200": _json("Checkpoints in iteration order.", "CheckpointList"), "400": _error("invalid_query.")},
            [
                _query(
                    "after",
                    "Only checkpoints past this iteration.",
                    {"type": "integer", "minimum": 0, "maximum": MAX_CHECKPOINT_AFTER, "default": 0},
                ),
                _query(
                    "limit",
                    "At most this many.",
                    {"type": "integer", "minimum": 1, "maximum": MAX_CHECKPOINTS_PAGE, "default": MAX_CHECKPOINTS_PAGE},
                ),
            ],
        )
    },
    "/v1/jobs/{job_id}/events": {
        "get": _job_operation(
            "Follow the job as Server-Sent Events: status, checkpoint (id = iteration), status changes, end. A stream whose key is "
            "revoked (or whose dashboard session ends) stops at once without `end`; reconnecting then gets 401.",
            {
                "200": {
                    "description": (
                        "An event stream. Each event is `event: status|checkpoint|end`, `id: <iteration>` and a `data:` line holding "
                        "a JSON object: StatusEvent, CheckpointEvent or EndEvent. The first status event carries `retry:`; "
                        "lines starting with `:` are keep-alives. The server closes the stream after a while; reconnect with Last-Event-ID."
                    ),
                    "content": {
                        "text/event-stream": {
                            # One event of the stream, as its fields: `data` holds the JSON object x-event-schemas describes.
                            "schema": {
                                "type": "object",
                                "required": ["event", "data"],
                                "properties": {
                                    "event": {"type": "string", "enum": ["status", "checkpoint", "end"]},
                                    "id": {"type": "string", "pattern": "^[0-9]+$"},
                                    "retry": {"type": "integer", "minimum": 0},
                                    "data": {
                                        "type": "string",
                                        "contentMediaType": JSON,
                                        "contentSchema": {
                                            "anyOf": [
                                                {"$ref": REF + "schemas/StatusEvent"},
                                                {"$ref": REF + "schemas/CheckpointEvent"},
                                                {"$ref": REF + "schemas/EndEvent"},
                                            ]
                                        },
                                    },
                                },
                            },
                            "x-event-schemas": {
                                "status": {"$ref": REF + "schemas/StatusEvent"},
                                "checkpoint": {"$ref": REF + "schemas/CheckpointEvent"},
                                "end": {"$ref": REF + "schemas/EndEvent"},
                            },
                        }
                    },
                },
                "400": _error("invalid_query."),
            },
            [
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "description": "Resume after this iteration.",
                    "schema": {"type": "integer", "minimum": 0},
                },
                _query("after", "Send checkpoints past this iteration.", {"type": "integer", "minimum": 0}),
            ],
        )
    },
    "/v1/jobs/{job_id}/result": {
        "get": _job_operation(
            "Download the finished picture.",
            {
                "200": _image(
                    "The result, in the job's `format` (png, jpeg or webp), with Content-Disposition naming it `<job id>.png`, "
                    "`.jpg` or `.webp`; the job's parameters are inside it as JSON (PNG tEXt `Description`, EXIF ImageDescription).",
                    RESULT_MIMETYPES,
                    "private, max-age=86400, immutable",
                ),
                "307": {
                    "description": "With object storage and STYLEQ_RESULT_URL_SECONDS set: the result is at a presigned URL of the "
                    "store, valid that many seconds, which serves the same bytes and headers; follow the redirect.",
                    "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
                },
                **NOT_MODIFIED,
                "409": _error("not_ready."),
                "410": _error("result_expired: the result was removed when its retention ended; the job's record stays."),
            },
        )
    },
    "/v1/jobs/{job_id}/preview": {
        "get": _job_operation(
            "Download the latest preview of a running job.",
            {
                "200": _image("The preview.", ["image/jpeg"], "no-cache"),
                **NOT_MODIFIED,
                "409": _error("not_ready."),
                "410": _error(
                    "preview_expired: the job ended and its preview was removed when its retention ended; the job's record stays."
                ),
            },
        )
    },
    "/v1/jobs/{job_id}/cancel": {
        "post": _job_operation(
            "Cancel a queued job now, or ask a running one to stop at its next checkpoint.",
            {"202": _json("The job after the request.", "Job"), "409": _error("job_finished.")},
        )
    },
    "/v1/jobs/{job_id}/content": {"get": _job_operation("Download the uploaded content image.", UPLOAD_RESPONSES)},
    "/v1/jobs/{job_id}/style": {"get": _job_operation("Download the uploaded style image (the first of a blend).", UPLOAD_RESPONSES)},
    "/v1/jobs/{job_id}/styles/{index}": {
        "get": _job_operation(
            "Download one of the job's uploaded style images, counted from 0 in the order given (the job's `styles`).",
            UPLOAD_RESPONSES,
            [
                {
                    "name": "index",
                    "in": "path",
                    "required": True,
                    "description": "The style's place, from 0.",
                    "schema": {"type": "integer", "minimum": 0},
                }
            ],
        )
    },
    "/healthz": {"get": {"summary": "Liveness.", "security": [], "responses": {"200": _json("Up.", "Health")}}},
    "/readyz": {
        "get": {
            "summary": "Readiness: the database and the broker answer.",
            "security": [],
            "responses": {"200": _json("Ready.", "Health"), "503": _json("Not ready; checks names the failing one.", "Health")},
        }
    },
    "/openapi.json": {"get": {"summary": "This document.", "security": [], "responses": {"200": {"description": "OpenAPI 3.1."}}}},
    "/metrics": {
        "get": {
            "summary": "Figures for Prometheus: jobs by status, the queue, wait and run times, storage, requests.",
            "description": "No API key; when STYLEQ_METRICS_TOKEN is set, `Authorization: Bearer <that token>` instead.",
            "security": [],
            "responses": {
                "200": {
                    "description": "The Prometheus text format, version 0.0.4.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": _error("invalid_token: STYLEQ_METRICS_TOKEN is set and the request did not send it."),
            },
        }
    },
}

# Answers any operation may give: from gunicorn before the app (414, 431, as JSON too), and while the database is down.
COMMON_RESPONSES: dict[str, Any] = {
    "414": {"$ref": REF + "responses/UriTooLong"},
    "431": {"$ref": REF + "responses/HeadersTooLarge"},
    "503": {"$ref": REF + "responses/Unavailable"},
}
# Requests that change something, signed in by the dashboard's cookie, must carry the CSRF header.
CHANGING_RESPONSES: dict[str, Any] = {
    "403": _error(
        f"forbidden: a request signed in by the dashboard's session cookie (not an API key) sent without the {CSRF_HEADER} header (any non-empty value)."
    ),
}


def _complete(paths: dict[str, Any]) -> dict[str, Any]:
    """Add the answers every operation may give to each one's own."""
    for operations in paths.values():
        for method, operation in operations.items():
            extra = {**COMMON_RESPONSES, **(CHANGING_RESPONSES if method in ("post", "delete") and operation.get("security") != [] else {})}
            operation["responses"] = {
                **operation["responses"],
                **{code: answer for code, answer in extra.items() if code not in operation["responses"]},
            }
    return paths


_complete(PATHS)

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "styleq",
        "version": "1",
        "description": (
            "Neural style transfer as asynchronous jobs. Every response, errors included, is JSON (images and the event "
            'stream aside); errors are {"error": {"code", "message"}}. A method a path does not offer is answered '
            "405 method_not_allowed with an Allow header; an unknown path 404 not_found."
        ),
    },
    "security": [{"bearer": []}],
    "paths": PATHS,
    "webhooks": {
        "jobEvent": {
            "post": {
                "summary": "A job's event, POSTed to its webhook_url as the job names events.",
                "description": (
                    "Standard Webhooks: the signature is HMAC-SHA256, under the base64-decoded key webhook secret (whsec_...), of "
                    "`{webhook-id}.{webhook-timestamp}.{body}`. Check it and that the timestamp is recent; drop a webhook-id seen before. "
                    "Any 2xx answer is a delivery; anything else (a redirect too) is tried again with exponential backoff for a while; "
                    "410 Gone stops the tries. Events of one job may arrive out of order: order them by timestamp."
                ),
                "security": [],
                "parameters": [
                    {
                        "name": "webhook-id",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "The same on every attempt.",
                    },
                    {
                        "name": "webhook-timestamp",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "Unix seconds of the attempt.",
                    },
                    {
                        "name": "webhook-signature",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "v1,<base64>; for a day after the key's secret is rotated, a second one by the old secret, space-separated.",
                    },
                ],
                "requestBody": {"required": True, "content": {JSON: {"schema": {"$ref": REF + "schemas/WebhookEventBody"}}}},
                "responses": {"2XX": {"description": "Delivered."}},
            }
        }
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key: Authorization: Bearer sq_..."}},
        "schemas": SCHEMAS,
        "responses": {
            "Unauthorized": {
                **_error("The API key is missing or not valid."),
                "headers": {"WWW-Authenticate": {"schema": {"type": "string", "example": 'Bearer realm="styleq"'}}},
            },
            "TooManyRequests": {
                **_error("too_many_requests: the API key is over its requests per minute (admin keys are exempt); nothing was done."),
                "headers": {"Retry-After": RETRY_AFTER},
            },
            "UriTooLong": _error("uri_too_long: the request line is over 4094 bytes."),
            "HeadersTooLarge": _error("headers_too_large: a header is over 8190 bytes, or there are over 100."),
            "Unavailable": {
                **_error(
                    "database_unavailable, or storage_unavailable (the storage refused a write, or the object store does not answer): try again after Retry-After seconds."
                ),
                "headers": {"Retry-After": RETRY_AFTER},
            },
            "MethodNotAllowed": {
                **_error("method_not_allowed: the path does not offer this method."),
                "headers": {"Allow": {"schema": {"type": "string"}}},
            },
        },
    },
}


@bp.get("/openapi.json")
def show_document() -> Response:
    """Send the OpenAPI document."""
    components = DOCUMENT["components"]
    schemas = {**model_schemas(), **components["schemas"], "TransferParams": params_schema()}
    return jsonify({**DOCUMENT, "components": {**components, "schemas": schemas}})
