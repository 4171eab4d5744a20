"""A job's progress as Server-Sent Events: its status, each checkpoint as it lands, and the end."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request
from sqlalchemy.orm import Session, sessionmaker

from shared import jobs
from shared.db import session_scope
from shared.errors import InvalidInput
from shared.models import Job

from .auth import credentials_check, current_key
from .backends import backends, close_session, db_session
from .jobs import query_argument
from .payloads import checkpoint_payload, job_payload

bp = Blueprint("events", __name__)
# How long a browser's EventSource waits before reconnecting (with Last-Event-ID) after a drop.
RETRY_MS = 2000


@bp.get("/jobs/<job_id>/events")
def stream_events(job_id: str) -> Response:
    """Stream the job's status and checkpoints until it finishes, resuming after Last-Event-ID or ?after=."""
    job = jobs.get_job(db_session(), current_key(), job_id)
    after = resume_point()
    config = current_app.config
    stream = EventStream(
        backends().session_factory,
        job.id,
        after,
        credentials_check(),
        poll_seconds=config["EVENTS_POLL_SECONDS"],
        keepalive_seconds=config["EVENTS_KEEPALIVE_SECONDS"],
        max_seconds=config["EVENTS_MAX_SECONDS"],
    )
    # The stream outlives the request: each poll opens its own short session instead.
    close_session()
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(stream.events(), mimetype="text/event-stream", headers=headers)


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
    """Poll one job in fresh short sessions and turn what changed into events."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        job_id: str,
        after: int,
        still_authorised: Callable[[Session], bool],
        *,
        poll_seconds: float,
        keepalive_seconds: float,
        max_seconds: float,
    ) -> None:
        self.session_factory = session_factory
        self.job_id = job_id
        self.after = after
        self.still_authorised = still_authorised
        self.poll_seconds = poll_seconds
        self.keepalive_seconds = keepalive_seconds
        self.max_seconds = max_seconds

    def events(self) -> Iterator[str]:
        """Yield the stream's text: status, checkpoints, status changes, then a final status and `end`."""
        last = self.after
        sent_state: tuple[str, bool] | None = None
        started = quiet_since = time.monotonic()
        while True:
            with session_scope(self.session_factory) as session:
                if not self.still_authorised(session):
                    # The key was revoked or the dashboard session ended: stop now; the client's reconnect gets 401.
                    return
                snapshot = self.read(session, last)
            if snapshot is None:
                yield format_event("end", {"status": None, "reason": "the job was deleted"}, last)
                return
            job, checkpoints = snapshot
            state = (job["status"], job["cancel_requested"])
            sent = False
            if sent_state is None:
                yield format_event("status", job, last, retry=RETRY_MS)
                sent_state, sent = state, True
            for checkpoint in checkpoints:
                last = checkpoint["iteration"]
                yield format_event("checkpoint", checkpoint, last)
                sent = True
            if job["status"] in jobs.FINISHED and len(checkpoints) == jobs.CHECKPOINT_PAGE:
                continue  # a finished job's history may be longer than one read: send all of it first
            if job["status"] in jobs.FINISHED:
                yield format_event("status", job, last)
                yield format_event("end", {"status": job["status"]}, last)
                return
            if state != sent_state:
                yield format_event("status", job, last)
                sent_state, sent = state, True
            now = time.monotonic()
            if sent:
                quiet_since = now
            elif now - quiet_since >= self.keepalive_seconds:
                # A comment keeps proxies from closing an idle connection; clients ignore it.
                yield ": keep-alive\n\n"
                quiet_since = now
            if now - started >= self.max_seconds:
                # Free the server's worker; the client reconnects with Last-Event-ID and loses nothing.
                return
            time.sleep(self.poll_seconds)

    def read(self, session: Session, after: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """Return the job and its checkpoints past `after`, or None once it is deleted."""
        # The job first: if it is finished, every checkpoint it wrote is committed and read below.
        job = session.get(Job, self.job_id)
        if job is None:
            return None
        payload = job_payload(session, job)
        checkpoints = [checkpoint_payload(c) for c in jobs.checkpoints_after(session, self.job_id, after)]
        return payload, checkpoints


def format_event(event: str, data: dict[str, Any], event_id: int, *, retry: int | None = None) -> str:
    """Return one Server-Sent Event (JSON data on one line)."""
    lines = [f"event: {event}", f"id: {event_id}"]
    if retry is not None:
        lines.append(f"retry: {retry}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"
