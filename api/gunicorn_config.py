"""gunicorn settings for the API (`gunicorn -c python:api.gunicorn_config 'api:create_app()'`).

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

import gunicorn.util

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
