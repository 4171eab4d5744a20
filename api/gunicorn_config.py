"""gunicorn settings for the API (`gunicorn -c python:api.gunicorn_config 'api:create_app()'`).

Logging: gunicorn's own lines and its access log go through styleq's one handler (`shared.logs`, JSON
lines unless standard error is a terminal), and each access line carries named fields: method,
path, status, duration, the request id, the API key's name and the job the request concerns, as the
app left them in the request's environ (`api.request_context`).

gunicorn answers requests it cannot parse (a request line over 4094 bytes: 414, headers too large:
431, a malformed line: 400) itself, before Flask sees them, with an HTML page. Every styleq response
is JSON with the error shape of `api.errors`, so those pages are written as that JSON instead.
gunicorn offers no setting for it: its workers call `gunicorn.util.write_error`, which this module
replaces when gunicorn loads it (in the master, before the workers fork).
"""

from __future__ import annotations

import json
import re
import socket

import datetime
import logging
from typing import Any

import gunicorn.glogging
import gunicorn.util

from api.request_context import JOB_ID, KEY_NAME, REQUEST_ID
from shared.logs import dict_config
from shared.settings import load_settings

CODES = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed", 431: "headers_too_large", 500: "internal_error", 501: "not_implemented"}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Write gunicorn's own error response as styleq's JSON error body."""
    code = CODES.get(status_int) or re.sub(r"\W+", "_", reason.lower()).strip("_") or "error"
    body = json.dumps({"error": {"code": code, "message": f"{reason}: {mesg}" if mesg else reason}}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"X-Content-Type-Options: nosniff\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("latin1")
    gunicorn.util.write_nonblock(sock, head + body)


gunicorn.util.write_error = write_json_error


class AccessLogger(gunicorn.glogging.Logger):
    """gunicorn's logger, with an access line of named fields instead of Apache's format."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: datetime.timedelta) -> None:
        """Log one answered request."""
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        fields = {
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": int(status) if str(status).isdigit() else status,
            "duration_ms": round(request_time.total_seconds() * 1000, 1),
            "client": environ.get("REMOTE_ADDR"),
            "request_id": environ.get(REQUEST_ID),
            "key_name": environ.get(KEY_NAME),
            "job_id": environ.get(JOB_ID),
        }
        extra = {name: value for name, value in fields.items() if value is not None}
        try:
            self.access_log.info("%s %s %s %.1f ms", fields["method"], fields["path"], fields["status"], fields["duration_ms"], extra=extra)
        except Exception:  # a broken log line must not break the response that was already sent
            logging.getLogger(__name__).exception("could not write an access line")


logger_class = "api.gunicorn_config.AccessLogger"
# gunicorn applies this in the master and the workers it forks; it also turns the access log on.
logconfig_dict = dict_config(load_settings())
