"""Fair use per API key: requests per minute and jobs queued or running at once, shared by every app on the database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from styleq.api import create_app
from styleq.shared.adapters.settings import Settings
from tests.api.support import assert_error, count_jobs, image_bytes, set_job, submit, upload_files

REQUESTS_PER_MINUTE = 5
ACTIVE_JOBS = 2


class Clock:
    """The API's clock, stopped at ten seconds past a minute until a test moves it."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 28, 12, 0, 10, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings with small limits."""
    settings.max_requests_per_minute = REQUESTS_PER_MINUTE
    settings.max_active_jobs = ACTIVE_JOBS
    return settings


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("styleq.api.limits.utcnow", clock)
    return clock


@pytest.fixture
def second_app(settings: Settings) -> Iterator[Flask]:
    """Another app on the same database, as a second gunicorn process or API host would be."""
    app = create_app(settings)
    app.config.update(TESTING=True)
    yield app
    app.extensions["styleq"].close()


def list_jobs(client: FlaskClient, headers: dict[str, str]):
    return client.get("/v1/jobs", headers=headers)


def test_a_key_past_its_requests_per_minute_gets_429_with_retry_after_until_the_minute_ends(client, keys, clock):
    for _ in range(REQUESTS_PER_MINUTE):
        assert list_jobs(client, keys.headers("alice")).status_code == 200

    refused = list_jobs(client, keys.headers("alice"))

    error = assert_error(refused, 429, "too_many_requests")
    assert refused.headers["Retry-After"] == "50" and f"{REQUESTS_PER_MINUTE} requests" in error["message"]
    clock.advance(49)
    assert list_jobs(client, keys.headers("alice")).status_code == 429
    clock.advance(1)
    assert list_jobs(client, keys.headers("alice")).status_code == 200


def test_every_v1_request_counts_and_the_limit_is_per_key(client, keys, clock):
    assert submit(client, keys.headers("alice")).status_code == 202
    job_id = list_jobs(client, keys.headers("alice")).get_json()["jobs"][0]["id"]
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/checkpoints", "/v1/jobs/unknown"):
        client.get(path, headers=keys.headers("alice"))

    assert_error(client.get(f"/v1/jobs/{job_id}", headers=keys.headers("alice")), 429, "too_many_requests")
    assert list_jobs(client, keys.headers("bob")).status_code == 200
    for _ in range(3 * REQUESTS_PER_MINUTE):
        assert list_jobs(client, keys.headers("admin")).status_code == 200  # admin keys are exempt


def test_two_apps_on_one_database_share_each_keys_requests_per_minute(client, second_app, keys, clock):
    other = second_app.test_client()
    for index in range(REQUESTS_PER_MINUTE):
        assert list_jobs(client if index % 2 else other, keys.headers("alice")).status_code == 200

    assert_error(list_jobs(client, keys.headers("alice")), 429, "too_many_requests")
    assert_error(list_jobs(other, keys.headers("alice")), 429, "too_many_requests")
    assert list_jobs(other, keys.headers("bob")).status_code == 200


def test_a_key_with_its_most_jobs_queued_or_running_is_refused_at_submit_until_one_ends(app, client, keys, settings, clock):
    settings.max_requests_per_minute = 0
    first, second = (submit(client, keys.headers("alice"), content=image_bytes((index, 0, 0))).get_json()["id"] for index in (1, 2))
    set_job(app, first, status="running")
    uploads = upload_files(settings)

    refused = submit(client, keys.headers("alice"), content=image_bytes((3, 0, 0)))

    error = assert_error(refused, 429, "too_many_active_jobs")
    assert refused.headers["Retry-After"] == "30" and f"{ACTIVE_JOBS} jobs queued or running" in error["message"]
    assert count_jobs(app) == 2 and upload_files(settings) == uploads  # nothing of the refused request is kept
    assert submit(client, keys.headers("bob")).status_code == 202
    assert client.post(f"/v1/jobs/{second}/cancel", headers=keys.headers("alice")).get_json()["status"] == "canceled"
    assert submit(client, keys.headers("alice"), content=image_bytes((3, 0, 0))).status_code == 202
    assert_error(submit(client, keys.headers("alice")), 429, "too_many_active_jobs")
    set_job(app, first, status="succeeded")
    assert submit(client, keys.headers("alice")).status_code == 202


def test_two_apps_on_one_database_share_each_keys_active_jobs(client, second_app, keys, settings, clock):
    settings.max_requests_per_minute = 0
    other = second_app.test_client()
    assert submit(client, keys.headers("alice")).status_code == 202
    assert submit(other, keys.headers("alice")).status_code == 202

    assert_error(submit(client, keys.headers("alice")), 429, "too_many_active_jobs")
    assert_error(submit(other, keys.headers("alice")), 429, "too_many_active_jobs")
    for _ in range(ACTIVE_JOBS + 1):
        assert submit(other, keys.headers("admin")).status_code == 202  # admin keys are exempt


def test_a_retry_of_a_job_already_submitted_returns_it_at_the_active_jobs_limit(client, keys, settings, clock):
    settings.max_requests_per_minute = 0
    headers = {**keys.headers("alice"), "Idempotency-Key": "order-1"}
    first = submit(client, headers).get_json()["id"]
    submit(client, keys.headers("alice"), content=image_bytes((5, 5, 5)))

    again = submit(client, headers)

    assert again.status_code == 200 and again.get_json()["id"] == first


def test_limits_of_zero_are_off(client, keys, settings, clock):
    settings.max_requests_per_minute = settings.max_active_jobs = 0

    for index in range(3 * REQUESTS_PER_MINUTE):
        assert submit(client, keys.headers("alice"), content=image_bytes((index, 1, 1))).status_code == 202
