"""Results, previews and uploads: 409 until written, then served with validators and caching headers, from a directory and
from object storage (`storage_url`); a result by presigned URL where set; 503 while the store does not answer."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from styleq.api import create_app
from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.object_storage import ObjectStorage
from styleq.shared.adapters.outputs import FORMATS, encode_result, read_metadata
from styleq.shared.adapters.settings import Settings
from styleq.shared.domain.params import resolve_params
from styleq.shared.service.keys import create_api_key
from styleq.shared.service.retention import RetentionPolicy, sweep_retention
from tests.api.conftest import api_settings
from tests.api.support import Keys, add_job, assert_error, image_bytes, set_job, submit
from tests.services import TEST_BUCKET, free_port


@pytest.fixture
def settings(settings: Settings, storage_url: str | None) -> Settings:
    """The API's settings with the test's store: its directory, or a prefix of its own in SeaweedFS."""
    return settings.model_copy(update={"storage_url": storage_url})


BACKENDS = [("sqlite", "directory"), ("sqlite", "s3"), ("postgres", "directory"), ("postgres", "s3")]


@pytest.fixture(scope="module", params=BACKENDS, ids=["-".join(backend) for backend in BACKENDS])
def shared_app(request, tmp_path_factory) -> Iterator[tuple[Flask, str | None]]:
    """One app, and its store's URL, per database and store, for the tests that look only at their own job's files.

    As the `app` fixture's: a migrated database (a copy of the session's SQLite one, or the session's Postgres one),
    and the storage directory or a prefix of its own in the shared SeaweedFS (boto3 takes the environment's endpoint
    and credentials when the app makes its client; they are set only for that).
    """
    database, store = request.param
    folder = tmp_path_factory.mktemp("shared-app")
    storage_url = f"s3://{TEST_BUCKET}/test-{uuid.uuid4().hex}" if store == "s3" else None
    if database == "sqlite":
        database_url = request.getfixturevalue("migrated_sqlite")(folder / "styleq.db")
    else:
        database_url = request.getfixturevalue("postgres_url")
    settings = api_settings(folder, database_url, storage_url=storage_url)
    with pytest.MonkeyPatch.context() as environment:
        if storage_url is not None:
            for name, value in request.getfixturevalue("s3_environment").items():
                environment.setenv(name, value)
        app = create_app(settings)
    app.config.update(TESTING=True)
    yield app, storage_url
    app.extensions["styleq"].close()


class Shared(NamedTuple):
    app: Flask
    client: FlaskClient
    keys: Keys
    storage_url: str | None


@pytest.fixture
def shared(shared_app) -> Shared:
    """The shared app with a client and keys of this test's own, so no earlier test's jobs are its."""
    app, storage_url = shared_app
    resources = app.extensions["styleq"]
    suffix = uuid.uuid4().hex[:8]
    with session_scope(resources.session_factory) as session:
        made = {
            name: create_api_key(session, f"{name}-{suffix}", secret=resources.secret_key, is_admin=name == "admin")
            for name in ("alice", "bob", "admin")
        }
        ids = {name: key.id for name, (key, _) in made.items()}
    tokens = {name: token for name, (_, token) in made.items()}
    return Shared(app, app.test_client(), Keys(tokens["alice"], tokens["bob"], tokens["admin"], ids), storage_url)


def test_result_is_not_ready_until_written_then_served_with_etag(shared):
    app, client, keys, _ = shared
    alice = keys.headers("alice")
    job_id = submit(client, alice).get_json()["id"]
    error = assert_error(client.get(f"/v1/jobs/{job_id}/result", headers=alice), 409, "not_ready")
    assert "queued" in error["message"]

    picture = image_bytes((10, 200, 10), kind="PNG")
    app.extensions["styleq"].storage.write_job_file(job_id, "result.png", picture)
    set_job(app, job_id, status="succeeded")

    with client.get(f"/v1/jobs/{job_id}/result", headers=alice) as response:
        assert response.status_code == 200 and response.mimetype == "image/png"
        assert response.data == picture
        assert response.headers["Cache-Control"] == "private, max-age=86400, immutable"
        etag = response.headers["ETag"]
    with client.get(f"/v1/jobs/{job_id}/result", headers={**alice, "If-None-Match": etag}) as response:
        assert response.status_code == 304 and response.data == b""


def test_preview_is_not_ready_until_written_then_revalidated_every_time(shared):
    app, client, keys, _ = shared
    alice = keys.headers("alice")
    job_id = submit(client, alice).get_json()["id"]
    assert_error(client.get(f"/v1/jobs/{job_id}/preview", headers=alice), 409, "not_ready")

    preview = image_bytes((10, 10, 200), kind="JPEG")
    app.extensions["styleq"].storage.write_job_file(job_id, "preview.jpg", preview)

    with client.get(f"/v1/jobs/{job_id}/preview", headers=alice) as response:
        assert response.status_code == 200 and response.mimetype == "image/jpeg" and response.data == preview
        assert response.headers["Cache-Control"] == "no-cache" and response.headers["ETag"]


def test_uploads_are_served_with_their_sniffed_type(shared):
    _, client, keys, _ = shared
    alice = keys.headers("alice")
    content, style = image_bytes((1, 2, 3), kind="JPEG"), image_bytes((4, 5, 6), kind="PNG")
    job_id = submit(client, alice, content=content, style=style).get_json()["id"]

    with client.get(f"/v1/jobs/{job_id}/content", headers=alice) as response:
        assert response.status_code == 200 and response.mimetype == "image/jpeg" and response.data == content
    with client.get(f"/v1/jobs/{job_id}/style", headers=alice) as response:
        assert response.status_code == 200 and response.mimetype == "image/png" and response.data == style
        etag = response.headers["ETag"]
    with client.get(f"/v1/jobs/{job_id}/style", headers={**alice, "If-None-Match": etag}) as response:
        assert response.status_code == 304


def test_a_result_removed_by_retention_is_410_gone_and_the_job_stays(app, client, keys):
    alice = keys.headers("alice")
    job_id = submit(client, alice).get_json()["id"]
    app.extensions["styleq"].storage.write_job_file(job_id, "result.png", image_bytes(kind="PNG"))
    set_job(app, job_id, status="succeeded", finished_at=datetime.now(UTC) - timedelta(days=31))

    resources = app.extensions["styleq"]
    removed = sweep_retention(resources.session_factory, resources.storage, RetentionPolicy.from_settings(resources.settings))

    assert [(removal.kind, removal.owner) for removal in removed if removal.kind == "result"] == [("result", job_id)]
    error = assert_error(client.get(f"/v1/jobs/{job_id}/result", headers=alice), 410, "result_expired")
    assert job_id in error["message"] and "submit the job again" in error["message"]
    job = client.get(f"/v1/jobs/{job_id}", headers=alice).get_json()
    assert job["status"] == "succeeded" and job["result_expired_at"] is not None


def test_a_preview_and_uploads_removed_by_retention_are_410_gone_like_the_result(app, client, keys):
    alice = keys.headers("alice")
    job_id = submit(client, alice).get_json()["id"]
    storage = app.extensions["styleq"].storage
    storage.write_job_file(job_id, "preview.jpg", image_bytes(kind="JPEG"))
    set_job(app, job_id, status="canceled", iteration=20, has_preview=True, finished_at=datetime.now(UTC) - timedelta(days=31))

    resources = app.extensions["styleq"]
    removed = sweep_retention(resources.session_factory, resources.storage, RetentionPolicy.from_settings(resources.settings))

    assert {removal.kind for removal in removed} == {"preview", "upload"}
    answers = {name: client.get(f"/v1/jobs/{job_id}/{name}", headers=alice) for name in ("preview", "content", "style", "styles/0")}
    preview = assert_error(answers["preview"], 410, "preview_expired")
    assert (
        f"the preview of job {job_id} was removed" in preview["message"]
        and "previews only for 7 days after their job ends" in preview["message"]
    )
    for name, role in (("content", "content"), ("style", "style"), ("styles/0", "style")):
        upload = assert_error(answers[name], 410, "upload_expired")
        assert f"the {role} image of job {job_id} was removed" in upload["message"] and "30 days" in upload["message"], name
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).get_json()["status"] == "canceled"
    # A job that ended before its first checkpoint never had a preview: none is said to have been removed.
    never = submit(client, alice, content=image_bytes((1, 2, 3))).get_json()["id"]
    set_job(app, never, status="failed", iteration=0)
    assert "has no preview" in assert_error(client.get(f"/v1/jobs/{never}/preview", headers=alice), 409, "not_ready")["message"]


@pytest.mark.parametrize("format_", ["png", "jpeg", "webp"])
def test_a_result_is_served_in_its_jobs_format_under_its_own_file_name(shared, format_):
    app, client, keys, _ = shared
    alice = keys.headers("alice")
    job_id = submit(client, alice, params=json.dumps({"format": format_, "quality": 80})).get_json()["id"]
    params = resolve_params({"format": format_, "quality": 80})
    written = encode_result(Image.new("RGB", (48, 32), (200, 120, 40)), params)
    app.extensions["styleq"].storage.write_job_file(job_id, FORMATS[format_].file_name, written)
    set_job(app, job_id, status="succeeded")

    with client.get(f"/v1/jobs/{job_id}/result", headers=alice) as response:
        assert response.status_code == 200 and response.data == written
        assert response.mimetype == {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}[format_]
        extension = {"png": "png", "jpeg": "jpg", "webp": "webp"}[format_]
        assert response.headers["Content-Disposition"] == f"inline; filename={job_id}.{extension}"
        with Image.open(io.BytesIO(response.data)) as picture:
            assert picture.format == FORMATS[format_].pillow
        assert read_metadata(response.data)["params"] == params.to_dict()


def test_a_job_stored_before_formats_existed_serves_its_png(shared):
    app, client, keys, _ = shared
    alice = keys.headers("alice")
    params = resolve_params({}).to_dict()
    for name in ("format", "quality", "style_loss"):
        params.pop(name)
    job_id = add_job(app, keys.ids["alice"], status="succeeded", params=params)
    app.extensions["styleq"].storage.write_job_file(job_id, "result.png", image_bytes(kind="PNG"))

    with client.get(f"/v1/jobs/{job_id}/result", headers=alice) as response:
        assert response.status_code == 200 and response.mimetype == "image/png"
        assert response.headers["Content-Disposition"] == f"inline; filename={job_id}.png"


def test_a_result_in_object_storage_is_a_redirect_to_a_short_lived_presigned_url_where_set(shared, monkeypatch):
    app, client, keys, storage_url = shared
    monkeypatch.setattr(app.extensions["styleq"].settings, "result_url_seconds", 60)  # for this test only: the app is shared
    alice = keys.headers("alice")
    job_id = submit(client, alice).get_json()["id"]
    assert_error(client.get(f"/v1/jobs/{job_id}/result", headers=alice), 409, "not_ready")
    picture = image_bytes((10, 200, 10), kind="PNG")
    app.extensions["styleq"].storage.write_job_file(job_id, "result.png", picture)
    set_job(app, job_id, status="succeeded")

    with client.get(f"/v1/jobs/{job_id}/result", headers=alice) as response:
        if storage_url is None:
            assert response.status_code == 200 and response.data == picture  # a directory's files go through the API
            return
    assert response.status_code == 307 and response.headers["Cache-Control"] == "no-store"
    served = requests.get(response.headers["Location"], timeout=10)
    assert served.status_code == 200 and served.content == picture and served.headers["Content-Type"] == "image/png"
    assert f"{job_id}.png" in served.headers["Content-Disposition"]


def test_the_api_answers_503_storage_unavailable_while_the_object_store_does_not_answer(app, client, keys, storage_url, monkeypatch):
    if storage_url is None:
        pytest.skip("a directory that is there answers; a full or read-only one is tests/api/test_api_submit.py's")
    alice = keys.headers("alice")
    job_id = submit(client, alice).get_json()["id"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    app.extensions["styleq"].storage = ObjectStorage.from_url(storage_url)

    for response in (
        client.get(f"/v1/jobs/{job_id}/result", headers=alice),
        client.get(f"/v1/jobs/{job_id}/content", headers=alice),
        submit(client, alice),
    ):
        assert_error(response, 503, "storage_unavailable")
        assert response.headers["Retry-After"]
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 200  # what the database knows is still there
