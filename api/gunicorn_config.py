"""gunicorn settings for the API (`gunicorn -c python:styleq.api.gunicorn_config 'styleq.api:create_app()'`).

Logging: gunicorn's own lines and its access log go through styleq's one handler (`shared.adapters.logs`, JSON
lines unless standard error is a terminal), and each access line carries named fields: method,
path, status, duration, the request id, the API key's name and the job the request concerns, as the
app left them in the request's environ (`api.request_context`).

gunicorn answers requests it cannot parse (a request line over 4094 bytes: 414, headers too large:
431, a malformed line: 400) itself, before Flask sees them, with an HTML page. Every styleq response
is JSON with the error shape of `api.errors`, so those pages are written as that JSON instead, with
the browser security headers that every other response carries (`api.security`).
gunicorn offers no setting for it: its workers call `gunicorn.util.write_error`, which this module
replaces when gunicorn loads it (in the master, before the workers fork).

Its hooks also give the worker processes one folder for prometheus_client's multiprocess mode, so
`/metrics` adds up every process's request counts: `PROMETHEUS_MULTIPROC_DIR` when the environment
sets it (emptied at start, as the library asks), else a fresh temporary folder removed at exit. It must
be set before any process imports prometheus_client, which the app does: so not with `--preload`.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import gunicorn.glogging
import gunicorn.util

from styleq.api.request_context import JOB_ID, KEY_NAME, REQUEST_ID
from styleq.api.security import SECURITY_HEADERS
from styleq.shared.adapters.logs import dict_config
from styleq.shared.adapters.settings import load_settings

CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Write gunicorn's own error response as styleq's JSON error body."""
    code = CODES.get(status_int) or re.sub(r"\W+", "_", reason.lower()).strip("_") or "error"
    body = json.dumps({"error": {"code": code, "message": f"{reason}: {mesg}" if mesg else reason}}).encode()
    headers = {"Connection": "close", "Content-Type": "application/json", **SECURITY_HEADERS, "Content-Length": str(len(body))}
    head = f"HTTP/1.1 {status_int} {reason}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    gunicorn.util.write_nonblock(sock, head.encode("latin1") + body)


gunicorn.util.write_error = write_json_error


class AccessLogger(gunicorn.glogging.Logger):
    """gunicorn's logger, with an access line of named fields instead of Apache's format."""

    def access(self, resp: Any, req: Any, environ: MutableMapping[str, Any], request_time: datetime.timedelta) -> None:
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


# Seconds a connection may wait for its next request, and under the gevent worker for its first one
# too. gunicorn's 2 s reset unanswered streams opened in a burst: a process whose one thread was busy
# with hundreds of other requests had not read them in time (44 of 500 with bench/streams.py on a
# loaded 2-core host, each client's request written within 0.01 s of its connect). Idle connections
# cost a greenlet each, so a longer wait is cheap; it still ends a client that never sends its request.
keepalive = 10
logger_class = "styleq.api.gunicorn_config.AccessLogger"
# gunicorn applies this in the master and the workers it forks; it also turns the access log on.
logconfig_dict = dict_config(load_settings())
_METRICS_FOLDER = "PROMETHEUS_MULTIPROC_DIR"
_made_metrics_folder: list[str] = []


def on_starting(server: Any) -> None:
    """Give the API processes an empty metrics folder before the first one forks."""
    given = os.environ.get(_METRICS_FOLDER)
    if given is None:
        folder = tempfile.mkdtemp(prefix="styleq-api-metrics-")
        _made_metrics_folder.append(folder)
        os.environ[_METRICS_FOLDER] = folder
        return
    Path(given).mkdir(parents=True, exist_ok=True)
    for stale in Path(given).glob("*.db"):  # a previous run's counts would be added to this one's
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """Drop an exited process's live gauges from the metrics folder (its counters stay in the totals)."""
    from prometheus_client import multiprocess  # imported only once the folder is set, as the library reads it at import

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics folder this module made."""
    for folder in _made_metrics_folder:
        shutil.rmtree(folder, ignore_errors=True)
