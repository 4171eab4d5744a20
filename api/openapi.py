"""The OpenAPI 3.1 document of the API, made when asked: the paths from the app's routes and their views' descriptions
(`api/documented.py`), the job's shapes from the models that serialise them (`api/payloads.py`), the parameters from
their specs; by hand only what nothing else says (the event stream's events, the answers every operation may give)."""

from __future__ import annotations

import functools
import re
from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from pydantic.json_schema import models_json_schema

from styleq.shared.adapters.models import JobStatus
from styleq.shared.service.job_json import WebhookEventBody

from .documented import CHANGING_RESPONSES, COMMON_RESPONSES, JSON, REF, SHARED_RESPONSES, described
from .payloads import DOCUMENTED, params_schema

bp = Blueprint("openapi", __name__)


@functools.cache
def model_schemas() -> dict[str, Any]:
    """Return the components of the models the API serialises (api/payloads.py, a webhook's body), each described once there."""
    _, schemas = models_json_schema(
        [(model, "serialization") for model in (*DOCUMENTED, WebhookEventBody)], ref_template=REF + "schemas/{model}"
    )
    return dict(schemas["$defs"])


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


def paths() -> dict[str, Any]:
    """Return the document's paths: each route of the app with its view's description (`api/documented.py`), its path in
    OpenAPI's form, and the answers every operation may give added to its own (the dashboard's pages are not the API's)."""
    found: dict[str, Any] = {}
    for rule in current_app.url_map.iter_rules():
        operation = getattr(current_app.view_functions[rule.endpoint], "openapi", None)
        if operation is None:
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            changing = method in ("POST", "DELETE") and operation.get("security") != []
            extra = {**COMMON_RESPONSES, **(CHANGING_RESPONSES if changing else {})}
            responses = {**operation["responses"], **{code: answer for code, answer in extra.items() if code not in operation["responses"]}}
            found.setdefault(path, {})[method.lower()] = {**operation, "responses": responses}
    return found


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
        "responses": SHARED_RESPONSES,
    },
}


@bp.get("/openapi.json")
@described({"summary": "This document.", "security": [], "responses": {"200": {"description": "OpenAPI 3.1."}}})
def show_document() -> Response:
    """Send the OpenAPI document."""
    components = DOCUMENT["components"]
    # The parameters' schema is made each time: it follows their specs (and a test's added one).
    schemas = {**model_schemas(), **components["schemas"], "TransferParams": params_schema()}
    return jsonify({**DOCUMENT, "paths": paths(), "components": {**components, "schemas": schemas}})
