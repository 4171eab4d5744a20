"""POST /v1/jobs: what a good submission leaves behind, and what a bad one must not."""

from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import event

from styleq.shared.service.jobs import RUN_JOB_TASK
from tests.api.conftest import MAX_UPLOAD_BYTES
from tests.api.support import (
    assert_error,
    assert_refused_storing_nothing,
    broker_messages,
    count_jobs,
    huge_png,
    image_bytes,
    submit,
    upload_files,
)


def test_submit_queues_job_and_sends_its_id_to_the_broker(app, client, keys, settings):
    response = submit(client, keys.headers("alice"), params=json.dumps({"preset": "seed", "size": [30, 45], "iterations": 50}))

    assert response.status_code == 202, response.get_data(as_text=True)
    job = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["queue_position"] == 1
    assert job["params"]["preset"] == "seed" and job["params"]["size"] == [30, 45] and job["iterations"] == 50
    assert job["progress"] == 0.0 and job["losses"] is None and job["error"] is None
    assert job["created_at"].endswith("Z") and job["started_at"] is None
    assert job["links"]["self"] == f"/v1/jobs/{job['id']}" and job["links"]["events"].endswith("/events")
    assert len(upload_files(settings)) == 2
    assert broker_messages(settings) == [(RUN_JOB_TASK, [job["id"]])]


def test_submitted_job_shows_queued_with_its_queue_position(client, keys):
    first = submit(client, keys.headers("alice")).get_json()
    second = submit(client, keys.headers("bob"), content=image_bytes((1, 2, 3))).get_json()

    shown = client.get(f"/v1/jobs/{second['id']}", headers=keys.headers("bob")).get_json()

    assert shown["status"] == "queued" and shown["queue_position"] == 2
    assert client.get(f"/v1/jobs/{first['id']}", headers=keys.headers("alice")).get_json()["queue_position"] == 1


def test_repeated_idempotency_key_returns_the_same_job(app, client, keys, settings):
    headers = {**keys.headers("alice"), "Idempotency-Key": "order-17"}
    first = submit(client, headers, params='{"iterations": 50}')
    again = submit(client, headers, params='{"iterations": 50}')

    assert first.status_code == 202 and again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert count_jobs(app) == 1
    assert len(upload_files(settings)) == 2
    assert len(broker_messages(settings)) == 1
    other = submit(client, {**keys.headers("bob"), "Idempotency-Key": "order-17"})
    assert other.status_code == 202 and other.get_json()["id"] != first.get_json()["id"]


def test_a_retry_naming_the_same_parameters_differently_is_the_same_request(app, client, keys):
    headers = {**keys.headers("alice"), "Idempotency-Key": "order-18"}
    first = submit(client, headers, params='{"preset": "seed", "size": [30, 45]}')
    again = submit(client, headers, params='{"size": [30, 45], "preset": "seed"}')

    assert again.status_code == 200 and again.get_json()["id"] == first.get_json()["id"]


IDEMPOTENCY_MISMATCHES = {
    "other content image": ({"content": image_bytes((9, 9, 9))}, "content image"),
    "other style image": ({"style": image_bytes((9, 9, 9))}, "style image"),
    "other params": ({"params": '{"iterations": 60}'}, "params"),
}


@pytest.mark.parametrize("change", IDEMPOTENCY_MISMATCHES.values(), ids=IDEMPOTENCY_MISMATCHES.keys())
def test_an_idempotency_key_reused_for_another_request_is_refused_and_stores_nothing(app, client, keys, settings, change):
    overrides, named = change
    headers = {**keys.headers("alice"), "Idempotency-Key": "order-19"}
    first = submit(client, headers, params='{"iterations": 50}')

    reused = submit(client, headers, **{"params": '{"iterations": 50}', **overrides})

    error = assert_error(reused, 422, "idempotency_key_reused")
    assert named in error["message"] and first.get_json()["id"] in error["message"]
    assert count_jobs(app) == 1 and len(upload_files(settings)) == 2 and len(broker_messages(settings)) == 1
    assert submit(client, headers, params='{"iterations": 50}').get_json()["id"] == first.get_json()["id"]


def test_submit_succeeds_and_leaves_job_queued_when_broker_is_down(app, client, keys, settings, caplog):
    settings.broker_url = "redis://127.0.0.1:1/0"

    with caplog.at_level(logging.WARNING, logger="styleq.api.jobs"):
        response = submit(client, keys.headers("alice"))

    assert response.status_code == 202
    assert response.get_json()["status"] == "queued"
    assert "sweeper will send it later" in caplog.text
    assert count_jobs(app) == 1


NOT_AN_IMAGE = b"just some text, not a picture\n" * 10
BAD_REQUESTS = {
    "missing content file": ({"omit": ("content",)}, 400, "missing_file", "content"),
    "missing style file": ({"omit": ("style",)}, 400, "missing_file", "style"),
    "text file as content": ({"content": NOT_AN_IMAGE}, 400, "invalid_image", "content"),
    "text file as style": ({"style": NOT_AN_IMAGE}, 400, "invalid_image", "style"),
    "image over 40 megapixels": ({"style": huge_png(8000, 6000)}, 400, "invalid_image", "megapixels"),
    "upload too large": ({"content": b"\x89PNG" + bytes(MAX_UPLOAD_BYTES)}, 413, "too_large", "content"),
    "params not json": ({"params": "{preset: seed"}, 400, "invalid_params", "JSON"),
    "params a json list": ({"params": "[1, 2]"}, 400, "invalid_params", "object"),
    "params with NaN": ({"params": '{"learning_rate": NaN}'}, 400, "invalid_params", "NaN"),
    "unknown param": ({"params": '{"colour": "blue"}'}, 422, "invalid_params", "colour"),
    "unknown preset": ({"params": '{"preset": "picasso"}'}, 422, "invalid_params", "picasso"),
    "iterations out of range": ({"params": '{"iterations": 0}'}, 422, "invalid_params", "iterations"),
    "iterations over service limit": ({"params": '{"iterations": 1001}'}, 422, "invalid_params", "1000"),
    "size over the longest side": ({"params": '{"size": [600, 700]}'}, 422, "invalid_params", "long side"),
    "long side over the longest side": ({"params": '{"size": 1000}'}, 422, "invalid_params", "long side"),
    "style scale out of range": ({"params": '{"style_scale": 8}'}, 422, "invalid_params", "style_scale"),
    "a schedule with automatic scales": (
        {"params": '{"scales": "auto", "scale_iterations": [1, 299]}'},
        422,
        "invalid_params",
        "scale_iterations",
    ),
    "layers of the wrong type": ({"params": '{"style_layers": 5}'}, 422, "invalid_params", "style_layers"),
    "weights as a path": ({"params": '{"weights": "/etc/passwd"}'}, 422, "invalid_params", "weights"),
    "weights as a file name": ({"params": '{"weights": "vgg19.pth"}'}, 422, "invalid_params", "weights"),
    "unknown style loss": ({"params": '{"style_loss": "wasserstein"}'}, 422, "invalid_params", "style_loss must be one of gram, moments"),
    "unknown format": ({"params": '{"format": "gif"}'}, 422, "invalid_params", "format must be one of png, jpeg, webp"),
    "quality under 1": ({"params": '{"quality": 0}'}, 422, "invalid_params", "quality must be a number from 1 to 100"),
    "quality over 100": ({"params": '{"quality": 101}'}, 422, "invalid_params", "quality must be a number from 1 to 100"),
    "quality not whole": ({"params": '{"quality": 92.5}'}, 422, "invalid_params", "quality must be an integer"),
    "quality as words": ({"params": '{"quality": "high"}'}, 422, "invalid_params", "quality"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_submission_is_refused_and_leaves_nothing_behind(app, client, keys, settings, case):
    assert_refused_storing_nothing(app, client, keys.headers("alice"), settings, *BAD_REQUESTS[case])


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "unauthorized"), ({"Authorization": "Bearer sq_not-a-key"}, "invalid_token"), ({"Authorization": "Basic abc"}, "unauthorized")],
    ids=["no key", "wrong key", "other scheme"],
)
def test_submission_without_valid_key_gets_401_and_leaves_nothing(app, client, keys, settings, headers, code):
    response = submit(client, headers)

    assert_error(response, 401, code)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert count_jobs(app) == 0 and upload_files(settings) == []


def test_body_over_the_request_limit_gets_413_json(app, client, keys, settings):
    oversized = bytes(app.config["MAX_CONTENT_LENGTH"] + 1)

    response = submit(client, keys.headers("alice"), content=oversized)

    assert_error(response, 413, "too_large")
    assert count_jobs(app) == 0 and upload_files(settings) == []


def test_overlong_idempotency_key_is_refused(app, client, keys, settings):
    response = submit(client, {**keys.headers("alice"), "Idempotency-Key": "k" * 201})

    assert_error(response, 400, "invalid_idempotency_key")
    assert count_jobs(app) == 0 and upload_files(settings) == []


def test_failed_insert_answers_500_json_and_removes_new_uploads(app, client, keys, settings):
    engine = app.extensions["styleq"].engine

    def refuse_jobs(connection, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO JOBS"):
            raise RuntimeError("the database refused the job")

    event.listen(engine, "before_cursor_execute", refuse_jobs)
    try:
        response = submit(client, keys.headers("alice"))
    finally:
        event.remove(engine, "before_cursor_execute", refuse_jobs)

    assert_error(response, 500, "internal_error")
    assert count_jobs(app) == 0 and upload_files(settings) == []


def test_storage_that_refuses_an_upload_answers_503_without_paths_and_stores_nothing(app, client, keys, settings, monkeypatch):
    storage = app.extensions["styleq"].storage
    real = storage.save_upload
    calls = []

    def full_after_the_first(data):
        calls.append(data)
        if len(calls) > 1:
            raise OSError(28, "No space left on device", str(storage.root / "uploads"))
        return real(data)

    monkeypatch.setattr(storage, "save_upload", full_after_the_first)
    response = submit(client, keys.headers("alice"))

    assert_error(response, 503, "storage_unavailable")
    assert int(response.headers["Retry-After"]) > 0 and str(storage.root) not in response.get_data(as_text=True)
    assert count_jobs(app) == 0 and upload_files(settings) == []


def test_weights_the_operator_has_not_pulled_are_refused_at_submit(app, client, keys, settings):
    response = submit(client, keys.headers("alice"), params=json.dumps({"weights": "vgg16"}))

    assert_error(response, 422, "weights_unavailable")
    assert "vgg16-caffe" in response.get_json()["error"]["message"]  # what is installed
    assert str(settings.models_path) not in response.get_data(as_text=True)
    assert count_jobs(app) == 0 and upload_files(settings) == [] and broker_messages(settings) == []

    # Once pulled, the same job is accepted.
    from styleq.shared.domain.params import WEIGHTS_FILES

    (settings.models_path / WEIGHTS_FILES["vgg16"]).write_bytes(b"")
    assert submit(client, keys.headers("alice"), params=json.dumps({"weights": "vgg16"})).status_code == 202
