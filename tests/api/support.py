"""Helpers for the API tests: images, submissions, and looking at the database, storage and broker directly."""

from __future__ import annotations

import io
import queue
import re
import struct
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from kombu import Connection
from sqlalchemy import func, select, update
from werkzeug.datastructures import FileStorage
from werkzeug.test import TestResponse, encode_multipart

from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import ApiKey, Checkpoint, Job, JobStatus
from styleq.shared.adapters.settings import Settings
from styleq.shared.domain.params import resolve_params
from styleq.shared.service.jobs import create_job

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Keys:
    alice: str
    bob: str
    admin: str
    ids: dict[str, int]

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, name)}"}


def image_bytes(color: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (48, 32), kind: str = "PNG") -> bytes:
    """Return a small real image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, kind)
    return buffer.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """Return a valid 1-bit PNG of `width` x `height` pixels that weighs only kilobytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * ((width + 7) // 8 + 1) * height, 9)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def submit(
    client: FlaskClient,
    headers: dict[str, str],
    *,
    content: bytes | None = None,
    style: bytes | list[bytes] | None = None,
    params: str | None = None,
    omit: tuple[str, ...] = (),
    fields: dict[str, Any] | None = None,
) -> TestResponse:
    """POST a job as multipart/form-data (small distinct images unless given; a list of styles is sent as the repeated field), with any other form `fields`."""
    data: dict[str, Any] = {}
    images = {"content": content or image_bytes((200, 40, 40)), "style": style or image_bytes((40, 40, 200))}
    for name, value in images.items():
        if name not in omit:
            data[name] = [file_field(name, one) for one in value] if isinstance(value, list) else file_field(name, value)
    if params is not None:
        data["params"] = params
    data.update(fields or {})
    # Encoded here in memory: the test client would spool a large body to a file it never closes.
    boundary, body = encode_multipart(data)
    return client.post("/v1/jobs", data=body, headers=headers, content_type=f"multipart/form-data; boundary={boundary}")


def file_field(name: str, data: bytes) -> FileStorage:
    """Return `data` as a file of a multipart form."""
    return FileStorage(io.BytesIO(data), filename=f"{name}.png", content_type="application/octet-stream")


def assert_error(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """Check the response is the JSON error shape with this status and code; return the error."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


def assert_refused_storing_nothing(
    app: Flask,
    client: FlaskClient,
    headers: dict[str, str],
    settings: Settings,
    submission: dict[str, Any],
    status: int,
    code: str,
    named: str,
) -> None:
    """Check that `submit(**submission)` is refused with this status and code, naming `named`, and adds no job and no file."""
    submit(client, headers)  # one good job, so "nothing new" is not "nothing at all"
    jobs_before, files_before = count_jobs(app), upload_files(settings)

    response = submit(client, headers, **{"content": image_bytes((5, 6, 7)), **submission})

    error = assert_error(response, status, code)
    assert named in error["message"]
    assert count_jobs(app) == jobs_before and upload_files(settings) == files_before


def first_group(pattern: str, text: str, flags: int = 0) -> str:
    """Return the first group of `pattern`'s first match in `text`; the test fails when nothing matches."""
    match = re.search(pattern, text, flags)
    assert match is not None, f"no match for {pattern!r}"
    return match.group(1)


def count_jobs(app: Flask) -> int:
    with session_scope(app.extensions["styleq"].session_factory) as session:
        return session.execute(select(func.count()).select_from(Job)).scalar_one()


def upload_files(settings: Settings) -> list[Path]:
    return sorted(path for path in (settings.storage_path / "uploads").rglob("*") if path.is_file())


def broker_messages(settings: Settings) -> list[tuple[str, list[Any]]]:
    """Take every message off the job queue of the real broker; return (task name, args) of each."""
    messages = []
    with Connection(settings.broker) as connection:
        job_queue = connection.SimpleQueue(settings.queue)
        try:
            while True:
                message = job_queue.get_nowait()
                messages.append((message.headers["task"], message.payload[0]))
                message.ack()
        except queue.Empty:
            pass
        finally:
            job_queue.close()
    return messages


def add_job(app: Flask, owner_id: int, *, created_at: datetime | None = None, status: str = "queued", **values: Any) -> str:
    """Insert a job directly, as if submitted at `created_at`; return its id."""
    with session_scope(app.extensions["styleq"].session_factory) as session:
        owner = session.get_one(ApiKey, owner_id)
        job, _ = create_job(session, owner, resolve_params({"iterations": 100}), "a" * 64, "b" * 64)
        job.created_at = created_at or datetime.now(UTC)
        job.status = JobStatus(status)
        for name, value in values.items():
            setattr(job, name, value)
        return job.id


def set_job(app: Flask, job_id: str, **values: Any) -> None:
    """Change a job's row directly, as a worker would."""
    with session_scope(app.extensions["styleq"].session_factory) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def add_checkpoints(app: Flask, job_id: str, iterations: list[int]) -> None:
    """Insert loss checkpoints directly, as a worker would."""
    with session_scope(app.extensions["styleq"].session_factory) as session:
        for iteration in iterations:
            session.add(
                Checkpoint(
                    job_id=job_id,
                    iteration=iteration,
                    elapsed_s=iteration / 10,
                    content=1.0 / iteration,
                    style=2.0 / iteration,
                    tv=0.5,
                    total=3.0 / iteration + 0.5,
                )
            )


def minutes_ago(minutes: int) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


def csrf_of(html: str) -> str:
    return first_group(r'name="csrf_token" value="([^"]+)"', html)


def sign_in(client: FlaskClient, token: str, next_page: str = "", **headers: str):
    form = client.get("/signin").get_data(as_text=True)
    return client.post("/signin", data={"csrf_token": csrf_of(form), "key": token, "next": next_page}, headers=headers)


def signed_in(app: Flask, keys: Keys, name: str) -> FlaskClient:
    client = app.test_client()
    assert sign_in(client, getattr(keys, name)).status_code == 302
    return client
