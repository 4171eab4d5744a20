"""A webhook receiver for the tests, as a client would write one: an http.server thread on 127.0.0.1 that
records what it is sent, and the Standard Webhooks check of a delivery."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import standardwebhooks

# How far a delivery's timestamp may be from the receiver's clock, as the spec's libraries allow.
TOLERANCE_SECONDS = 300


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST, waits `delay` seconds, then answers the next of `answers`
    (204 after them) with `headers`."""

    answers: list[int] = field(default_factory=list)
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(Received({name.lower(): value for name, value in self.headers.items()}, body, time.time()))
                time.sleep(receiver.delay)
                self.send_response(receiver.answers.pop(0) if receiver.answers else 204)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/styleq-hook"

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 60.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while not predicate(list(self.requests)):
            if time.monotonic() > deadline:
                pytest.fail(f"the receiver never got what was expected: {[r.body[:80] for r in self.requests]}")
            time.sleep(0.1)
        return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify(secret: str, request: Received) -> dict:
    """Check a delivery as its receiver would, by the spec; return its event.

    The three headers are there; the timestamp is recent (no replay); one of the space-separated `v1,`
    signatures equals HMAC-SHA256, under the base64-decoded secret, of `{id}.{timestamp}.{body}`.
    """
    message_id, timestamp, signatures = (request.headers[name] for name in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    assert abs(time.time() - int(timestamp)) <= TOLERANCE_SECONDS
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{message_id}.{timestamp}.".encode() + request.body, hashlib.sha256).digest()).decode()
    offered = [signature.partition(",") for signature in signatures.split(" ")]
    assert any(version == "v1" and hmac.compare_digest(signature.encode(), expected.encode()) for version, _, signature in offered)
    # The specification's own library agrees.
    assert standardwebhooks.Webhook(secret).verify(request.body, request.headers) == json.loads(request.body)
    return json.loads(request.body)
