"""How a view describes its operation for the OpenAPI document: `@described(...)` beside the route, in OpenAPI's own
words, with the shapes many answers share. `api/openapi.py` makes the paths from the routes and these descriptions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .auth import CSRF_HEADER

JSON = "application/json"
REF = "#/components/"
F = TypeVar("F", bound=Callable[..., Any])


def described(operation: dict[str, Any]) -> Callable[[F], F]:
    """Describe the view's operation as OpenAPI does (summary, parameters, requestBody, responses; security [] for one
    that takes no key). The answers every operation may give are added when the document is made."""

    def describe(view: F) -> F:
        view.openapi = operation  # type: ignore[attr-defined]
        return view

    return describe


def job_operation(summary: str, responses: dict[str, Any], parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Return an operation on one of the client's jobs (/v1/jobs/{job_id}...): with its id, a key's answers, and the 404 of a job not theirs."""
    return {"summary": summary, "parameters": [JOB_ID, *(parameters or [])], "responses": {**responses, **AUTH, **UNKNOWN}}


def error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": REF + "schemas/Error"}}}}


def json_body(description: str, schema: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": {"$ref": REF + "schemas/" + schema}}}}
    return {**response, "headers": headers} if headers else response


def image(description: str, mimetypes: list[str], cache: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"ETag": {"schema": {"type": "string"}}, "Cache-Control": {"schema": {"type": "string", "example": cache}}},
        "content": {mimetype: {"schema": {"type": "string", "contentEncoding": "binary"}} for mimetype in mimetypes},
    }


def query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "description": "The job's id.", "schema": {"type": "string"}}
# Every /v1 operation needs a key, and counts against the key's requests per minute.
AUTH = {"401": {"$ref": REF + "responses/Unauthorized"}, "429": {"$ref": REF + "responses/TooManyRequests"}}
UNKNOWN = {"404": error("No job with this id belongs to the client.")}
NOT_MODIFIED = {"304": {"description": "Not modified (If-None-Match matched the ETag)."}}
RETRY_AFTER = {"description": "Seconds to wait before trying again.", "schema": {"type": "integer", "minimum": 1}}
# The answers many operations share, as the document's components (`#/components/responses/...`).
SHARED_RESPONSES: dict[str, Any] = {
    "Unauthorized": {
        **error("The API key is missing or not valid."),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string", "example": 'Bearer realm="styleq"'}}},
    },
    "TooManyRequests": {
        **error("too_many_requests: the API key is over its requests per minute (admin keys are exempt); nothing was done."),
        "headers": {"Retry-After": RETRY_AFTER},
    },
    "UriTooLong": error("uri_too_long: the request line is over 4094 bytes."),
    "HeadersTooLarge": error("headers_too_large: a header is over 8190 bytes, or there are over 100."),
    "Unavailable": {
        **error(
            "database_unavailable, or storage_unavailable (the storage refused a write, or the object store does not answer): try again after Retry-After seconds."
        ),
        "headers": {"Retry-After": RETRY_AFTER},
    },
    "MethodNotAllowed": {
        **error("method_not_allowed: the path does not offer this method."),
        "headers": {"Allow": {"schema": {"type": "string"}}},
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
    "403": error(
        f"forbidden: a request signed in by the dashboard's session cookie (not an API key) sent without the {CSRF_HEADER} header (any non-empty value)."
    ),
}
