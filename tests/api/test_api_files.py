"""Results, previews and uploads: 409 until written, then served with validators and caching headers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.retention import RetentionPolicy, sweep_retention
from tests.api.support import assert_error, image_bytes, set_job, submit


def test_result_is_not_ready_until_written_then_served_with_etag(app, client, keys):
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


def test_preview_is_not_ready_until_written_then_revalidated_every_time(app, client, keys):
    alice = keys.headers("alice")
    job_id = submit(client, alice).get_json()["id"]
    assert_error(client.get(f"/v1/jobs/{job_id}/preview", headers=alice), 409, "not_ready")

    preview = image_bytes((10, 10, 200), kind="JPEG")
    app.extensions["styleq"].storage.write_job_file(job_id, "preview.jpg", preview)

    with client.get(f"/v1/jobs/{job_id}/preview", headers=alice) as response:
        assert response.status_code == 200 and response.mimetype == "image/jpeg" and response.data == preview
        assert response.headers["Cache-Control"] == "no-cache" and response.headers["ETag"]


def test_uploads_are_served_with_their_sniffed_type(client, keys):
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
