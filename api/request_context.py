"""Each request's id, and the job it concerns: on its log lines, in its access line and in `X-Request-ID`.

The id is the client's `X-Request-ID` when it sends a sensible one (a proxy's, to follow one request
through both logs), else a new one. A view that learns which job the request is about (the URL's
`job_id`, or the job a submission made) calls `concerns_job`; the lines logged from then on carry
`job_id`. gunicorn's access line reads the same values from the request's environ
(`api.gunicorn_config.AccessLogger`), since it is written after the request's context is gone.
"""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request

from styleq.shared.adapters import logs

REQUEST_ID_HEADER = "X-Request-ID"
# What the access line reads from the request's environ.
REQUEST_ID, KEY_NAME, JOB_ID = "styleq.request_id", "styleq.key_name", "styleq.job_id"
# A client's id is believed only if it cannot garble a log line or a header.
_SENSIBLE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def init_app(app: Flask) -> None:
    """Give every request an id and log fields, and return the id in `X-Request-ID`."""
    app.before_request(start_request)
    app.after_request(finish_request)
    app.teardown_request(end_request)


def start_request() -> None:
    """Name the request, and the job its URL names, on the lines logged while it runs."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if _SENSIBLE_ID.match(given) else uuid.uuid4().hex
    request.environ[REQUEST_ID] = request_id
    # Reset at teardown: gunicorn's threads serve one request after another in one context.
    g.log_context_token = logs.bind(request_id=request_id)
    job_id = (request.view_args or {}).get("job_id")
    if isinstance(job_id, str):
        concerns_job(job_id)


def concerns_job(job_id: str) -> None:
    """Say that this request is about job `job_id`: its later lines and its access line carry it."""
    request.environ[JOB_ID] = job_id
    token = logs.bind(job_id=job_id)
    g.setdefault("log_context_tokens", []).append(token)


def finish_request(response: Response) -> Response:
    """Return the request id to the client, and leave the key's name for the access line."""
    response.headers[REQUEST_ID_HEADER] = request.environ.get(REQUEST_ID, "")
    key = g.get("api_key")
    if key is not None:
        request.environ[KEY_NAME] = key.name
    return response


def end_request(_error: BaseException | None = None) -> None:
    """Drop the request's log fields, newest first."""
    for token in reversed(g.pop("log_context_tokens", [])):
        logs.unbind(token)
    token = g.pop("log_context_token", None)
    if token is not None:
        logs.unbind(token)
