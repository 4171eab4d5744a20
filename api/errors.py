"""The one place that turns every error into `{"error": {"code": ..., "message": ...}}` with its HTTP status."""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, jsonify
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from styleq.shared.adapters.storage import StoreUnreachable
from styleq.shared.domain.errors import (
    Conflict,
    Gone,
    InvalidInput,
    LimitExceeded,
    NotFound,
    StorageUnavailable,
    StyleqError,
    Unauthorized,
    Unprocessable,
)

log = logging.getLogger(__name__)


class TooLarge(InvalidInput):
    """An upload over the size limit."""

    code = "too_large"


# Most specific first: the first class the error is an instance of decides the status.
STATUS: list[tuple[type[StyleqError], int]] = [
    (Unprocessable, 422),
    (TooLarge, 413),
    (InvalidInput, 400),
    (Unauthorized, 401),
    (NotFound, 404),
    (Conflict, 409),
    (Gone, 410),
    (StorageUnavailable, 503),
    (LimitExceeded, 429),
]
# How long a client is told to wait before trying again while the database or storage is unavailable.
DATABASE_RETRY_AFTER_SECONDS = 10
# Werkzeug's own errors (unknown URL, wrong method, body too large...) get codes in the same style.
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}


def error_response(status: int, code: str, message: str) -> Response:
    """Return the JSON error body with `status`."""
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    return response


def handle_styleq_error(error: StyleqError) -> Response:
    """Map a service error to its status."""
    status = next((status for cls, status in STATUS if isinstance(error, cls)), 400)
    response = error_response(status, error.code, error.message)
    if isinstance(error, Unauthorized):
        # RFC 6750: say which scheme, and flag a key that was given but is not valid.
        challenge = 'Bearer realm="styleq"'
        if error.code == "invalid_token":
            challenge += ', error="invalid_token"'
        response.headers["WWW-Authenticate"] = challenge
    if isinstance(error, StorageUnavailable):
        response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
    if isinstance(error, LimitExceeded):
        response.headers["Retry-After"] = str(error.retry_after_seconds)
    return response


def handle_http_error(error: HTTPException) -> Response:
    """Give Werkzeug's errors (404, 405, 413, ...) the JSON shape, keeping headers such as Allow."""
    status = error.code or 500
    code = HTTP_CODES.get(status) or re.sub(r"\W+", "_", (error.name or "error").lower()).strip("_")
    response = error_response(status, code, error.description or error.name)
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def handle_database_unavailable(error: OperationalError) -> Response:
    """Answer 503 with Retry-After while the database is unreachable: nothing stored is lost, the client tries again."""
    log.error("database unreachable: %s", error.orig if error.orig is not None else error)
    response = error_response(503, "database_unavailable", "the service's database is unreachable for a moment; try again shortly")
    response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
    return response


def handle_storage_unreachable(error: StoreUnreachable) -> Response:
    """Answer 503 storage_unavailable with Retry-After while the object store does not answer: nothing was lost, the client tries again."""
    log.error("object store unreachable: %s", error)
    return handle_styleq_error(StorageUnavailable("the service's storage is unreachable for a moment; try again shortly"))


def handle_unexpected(error: Exception) -> Response:
    """Log an unexpected error with its traceback and answer 500 without details."""
    if isinstance(error, HTTPException):
        return handle_http_error(error)
    log.error("unhandled error", exc_info=error)
    return error_response(500, "internal_error", "the server failed to handle this request; it has been logged")


def register_error_handlers(app: Flask) -> None:
    """Install the handlers on `app`."""
    app.register_error_handler(StyleqError, handle_styleq_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(OperationalError, handle_database_unavailable)
    app.register_error_handler(StoreUnreachable, handle_storage_unreachable)
    app.register_error_handler(Exception, handle_unexpected)
