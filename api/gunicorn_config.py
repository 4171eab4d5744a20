"""gunicorn settings for the API (`gunicorn -c python:api.gunicorn_config 'api:create_app()'`).

gunicorn answers requests it cannot parse (a request line over 4094 bytes: 414, headers too large:
431, a malformed line: 400) itself, before Flask sees them, with an HTML page. Every styleq response
is JSON with the error shape of `api.errors`, so those pages are written as that JSON instead.
gunicorn offers no setting for it: its workers call `gunicorn.util.write_error`, which this module
replaces when gunicorn loads it (in the master, before the workers fork).

Its hooks also give the worker processes one folder for prometheus_client's multiprocess mode, so
`/metrics` adds up every process's request counts: `PROMETHEUS_MULTIPROC_DIR` when the environment
sets it (emptied at start, as the library asks), else a fresh temporary folder removed at exit. It must
be set before any process imports prometheus_client, which the app does: so not with `--preload`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

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
