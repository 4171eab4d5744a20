"""A job's progress as Server-Sent Events: its status, each checkpoint as it lands, and the end."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, g, request
from sqlalchemy.orm import Session, sessionmaker

from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import ApiKey
from styleq.shared.domain.errors import InvalidInput, LimitExceeded
from styleq.shared.service import jobs

from .auth import credentials_check, current_key
from .backends import backends, close_session, db_session
from .documented import JSON, REF, described, error, job_operation, query
from .jobs import query_argument
from .stream_hub import StreamHub, read_job
from .stream_slots import make_stream_slots

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

bp = Blueprint("events", __name__)
# How long a browser's EventSource waits before reconnecting (with Last-Event-ID) after a drop.
RETRY_MS = 2000
HUB_EXTENSION = "styleq.streams"


# A key at its cap of open streams is asked back this soon: a stream ends at the latest after EVENTS_MAX_SECONDS.
STREAMS_RETRY_AFTER_SECONDS = 30


STREAM_PATH = re.compile(r"/v1/jobs/[^/]+/events/?")
# Stream opens one API process works on at once; the rest wait their turn without running. 2, not 4: with 500
# streams opening on a loaded 2-core host, 4 left an admin's /v1/jobs over 1 s up to 5 times a run (each of its
# queries queued behind the openers'); 2 opened them as fast (bench/streams.py, 31 s on Postgres, 16 s embedded).
STREAM_OPENS_AT_ONCE = 2


class StreamOpenGate:
    """WSGI middleware: a stream's opening (authentication, the job, its slot, its history) waits for one of a few turns.

    Under gunicorn's gevent worker every request of a process shares one thread, and SQLite calls never
    yield: 250 streams opening at once were 250 runnable requests that a new /healthz or sign-in waited
    behind for up to 7 s, and connections whose request line was not read within gunicorn's keep-alive
    timeout (2 s, which also bounds the first request) were reset unanswered: 107 of 500 streams
    (measured with bench/streams.py and py-spy). A turn ends with the stream's first event.
    """

    def __init__(self, wsgi_app: WSGIApplication, at_once: int = STREAM_OPENS_AT_ONCE) -> None:
        self.wsgi_app = wsgi_app
        self.turns = threading.BoundedSemaphore(at_once)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Serve the request; an event stream's up to its first event within a turn."""
        if not STREAM_PATH.fullmatch(environ.get("PATH_INFO", "")):
            return self.wsgi_app(environ, start_response)
        with self.turns:
            body = self.wsgi_app(environ, start_response)
            chunks = iter(body)
            try:
                first = next(chunks)
            except StopIteration:
                return body
            except BaseException:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
                raise
        return FirstThenRest(first, chunks, body)


class FirstThenRest:
    """A response body whose first chunk was already taken; closing it closes the original (so a stream's slot is given back)."""

    def __init__(self, first: bytes, rest: Iterator[bytes], body: Iterable[bytes]) -> None:
        self.first, self.rest, self.body = first, rest, body

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        yield from self.rest

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


@bp.get("/jobs/<job_id>/events")
@described(
    job_operation(
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
            "400": error("invalid_query."),
        },
        [
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "Resume after this iteration.",
                "schema": {"type": "integer", "minimum": 0},
            },
            query("after", "Send checkpoints past this iteration.", {"type": "integer", "minimum": 0}),
        ],
    )
)
def stream_events(job_id: str) -> Response:
    """Stream the job's status and checkpoints until it finishes, resuming after Last-Event-ID or ?after=."""
    key = current_key()
    job = jobs.get_job(db_session(), key, job_id)
    after = resume_point()
    config = current_app.config
    hub = stream_hub()
    slot = take_stream_slot(hub, key)
    # The history so far, read in the request's session (the job is already loaded there): a session of the
    # stream's own cost a connection check-out, its ping and the job again, each a wait on a busy process.
    history = read_job(db_session(), job.id, after)
    stream = EventStream(
        backends().session_factory,
        hub,
        job.id,
        after,
        history,
        (key.id, g.get("dashboard_session_id")),
        credentials_check(),
        keepalive_seconds=config["EVENTS_KEEPALIVE_SECONDS"],
        max_seconds=config["EVENTS_MAX_SECONDS"],
    )
    # The stream outlives the request: its own reads use short sessions of their own.
    close_session()
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    response = Response(stream.events(), mimetype="text/event-stream", headers=headers)
    if slot is not None:
        # Called when the server closes the response, even one never iterated (a generator's `finally` would not run then).
        response.call_on_close(lambda: hub.slots.release(slot))
    return response


def stream_hub() -> StreamHub:
    """Return this process's stream hub, made on first use from the app's settings."""
    hub = current_app.extensions.get(HUB_EXTENSION)
    if hub is None:
        hub = current_app.extensions[HUB_EXTENSION] = StreamHub(
            backends().session_factory,
            make_stream_slots(backends().settings),
            poll_seconds=current_app.config["EVENTS_POLL_SECONDS"],
        )
    return hub


def take_stream_slot(hub: StreamHub, key: ApiKey) -> str | None:
    """Take one of the key's open-stream slots (none for admin keys or without a cap), or refuse with 429."""
    limit = backends().settings.max_streams_per_key
    if limit <= 0 or key.is_admin:
        return None
    slot = hub.slots.acquire(key.id, limit)
    if slot is None:
        raise LimitExceeded(
            f"this API key already has {limit} event streams open, the most allowed at once; close one (or follow "
            f"the job by polling GET /v1/jobs/{{id}}) and try again",
            code="too_many_streams",
            retry_after_seconds=STREAMS_RETRY_AFTER_SECONDS,
        )
    return slot


def resume_point() -> int:
    """Return the iteration after which to send checkpoints: Last-Event-ID on a reconnect, else ?after=.

    Both are checked whenever given, so a bad `after` is refused even beside a good Last-Event-ID.
    """
    given = [
        (source, _iteration(source, text))
        for source, text in (("Last-Event-ID", request.headers.get("Last-Event-ID")), ("after", query_argument("after")))
        if text is not None and text.strip()
    ]
    return given[0][1] if given else 0


def _iteration(source: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidInput(f"{source} must be a checkpoint iteration (an integer >= 0), got {text!r}", code="invalid_query")
    return value


class EventStream:
    """Turn what the process's stream hub reads of one job into this client's events."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        hub: StreamHub,
        job_id: str,
        after: int,
        history: tuple[dict[str, Any] | None, list[dict[str, Any]]],
        check_id: Hashable,
        still_authorised: Callable[[Session], bool],
        *,
        keepalive_seconds: float,
        max_seconds: float,
    ) -> None:
        self.session_factory = session_factory
        self.hub = hub
        self.job_id = job_id
        self.after = after
        self.history = history
        self.check_id = check_id
        self.still_authorised = still_authorised
        self.keepalive_seconds = keepalive_seconds
        self.max_seconds = max_seconds

    def events(self) -> Iterator[str]:
        """Yield the stream's text: status, checkpoints, status changes, then a final status and `end`."""
        started = quiet_since = time.monotonic()
        # The history so far is this stream's own read (made by the request); what comes after it, the hub's reads
        # shared with every stream of the job.
        job, checkpoints = self.history
        if job is None:
            yield format_event("end", {"status": None, "reason": "the job was deleted"}, self.after)
            return
        last = self.after
        yield format_event("status", job, last, retry=RETRY_MS)
        sent_state = (job["status"], job["cancel_requested"])
        for checkpoint in checkpoints:
            last = checkpoint["iteration"]
            yield format_event("checkpoint", checkpoint, last)
        if job["status"] in jobs.FINISHED:
            yield format_event("status", job, last)
            yield format_event("end", {"status": job["status"]}, last)
            return
        with self.hub.watch(self.job_id, last, self.check_id, self.still_authorised) as feed:
            seen = feed.version
            while True:
                now = time.monotonic()
                self.hub.wait(feed, seen, timeout=max(0.0, min(quiet_since + self.keepalive_seconds, started + self.max_seconds) - now))
                if feed.version == seen:
                    if time.monotonic() - started >= self.max_seconds:
                        # Free the server's worker; the client reconnects with Last-Event-ID and loses nothing.
                        return
                    # A comment keeps proxies from closing an idle connection; clients ignore it.
                    yield ": keep-alive\n\n"
                    quiet_since = time.monotonic()
                    continue
                seen = feed.version
                if not self.hub.authorised.get(self.check_id, True):
                    # The key was revoked or the dashboard session ended: stop now; the client's reconnect gets 401.
                    return
                job, batch, read_after = feed.job, feed.checkpoints, feed.read_after
                if job is None:
                    yield format_event("end", {"status": None, "reason": "the job was deleted"}, last)
                    return
                if last < read_after:
                    # This stream missed a read (it joined later than the hub's, or its client was slow): fetch the gap itself.
                    with session_scope(self.session_factory) as session:
                        _, gap = read_job(session, self.job_id, last)
                    batch = [checkpoint for checkpoint in gap if checkpoint["iteration"] <= read_after] + batch
                sent = False
                for checkpoint in batch:
                    if checkpoint["iteration"] > last:
                        last = checkpoint["iteration"]
                        yield format_event("checkpoint", checkpoint, last)
                        sent = True
                if job["status"] in jobs.FINISHED:
                    yield format_event("status", job, last)
                    yield format_event("end", {"status": job["status"]}, last)
                    return
                state = (job["status"], job["cancel_requested"])
                if state != sent_state:
                    yield format_event("status", job, last)
                    sent_state, sent = state, True
                now = time.monotonic()
                if sent:
                    quiet_since = now
                elif now - quiet_since >= self.keepalive_seconds:
                    yield ": keep-alive\n\n"
                    quiet_since = now
                if now - started >= self.max_seconds:
                    return


def format_event(event: str, data: dict[str, Any], event_id: int, *, retry: int | None = None) -> str:
    """Return one Server-Sent Event (JSON data on one line)."""
    lines = [f"event: {event}", f"id: {event_id}"]
    if retry is not None:
        lines.append(f"retry: {retry}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"
