"""gunicorn's own answers to requests it cannot parse: styleq's JSON error shape and the browser security headers."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import pytest

from styleq.api.security import SECURITY_HEADERS
from tests.services import Process, start_api

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def api_address(tmp_path_factory) -> Iterator[tuple[str, int]]:
    """Start a real gunicorn serving the API on the embedded default; yield its host and port."""
    root = tmp_path_factory.mktemp("gunicorn-errors")
    environment = {name: value for name, value in os.environ.items() if name not in ("STYLEQ_DATABASE_URL", "STYLEQ_BROKER_URL")}
    environment["STYLEQ_DATA_DIR"] = str(root / "data")
    process: Process
    process, url = start_api(environment, root)
    try:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)
    finally:
        process.stop()


def send_raw(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as is and return the status, headers (lower-case names) and body of the answer."""
    with socket.create_connection(address, timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /v1/jobs?cursor=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
        (b"THIS IS NOT HTTP\r\n\r\n", 400, "bad_request"),
    ],
    ids=["request-line-too-long", "header-too-large", "malformed-request-line"],
)
def test_gunicorns_own_errors_are_json_with_the_security_headers(api_address, request_bytes, status, code):
    got_status, headers, body = send_raw(api_address, request_bytes)

    assert got_status == status
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == code
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name.lower()) == value, (name, headers)
