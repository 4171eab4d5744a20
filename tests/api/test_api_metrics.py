"""`GET /metrics`: the jobs as the database has them, storage, webhook deliveries and requests, in Prometheus's format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from styleq.api import create_app
from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import DeliveryStatus, WebhookDelivery, WebhookEvent
from tests.api.support import add_job, assert_error


def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def scrape(client, **headers) -> dict[tuple[str, frozenset], float]:
    """Fetch /metrics and parse it with prometheus_client's own parser: {(sample name, labels): value}."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def sample(samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_jobs_by_status_and_the_queue_are_the_database_s(app, client, keys):
    owner = keys.ids["alice"]
    oldest = add_job(app, owner, created_at=ago(600))
    add_job(app, owner, created_at=ago(120))
    add_job(app, owner, created_at=ago(100), status="running", started_at=ago(90))
    add_job(app, owner, created_at=ago(1000), status="canceled", finished_at=ago(999))  # canceled while queued

    samples = scrape(client)

    assert sample(samples, "styleq_database_up") == 1
    counts = {status: sample(samples, "styleq_jobs", status=status) for status in ("queued", "running", "succeeded", "failed", "canceled")}
    assert counts == {"queued": 2, "running": 1, "succeeded": 0, "failed": 0, "canceled": 1}
    assert sample(samples, "styleq_queue_depth") == 2
    assert 600 <= sample(samples, "styleq_queue_oldest_job_age_seconds") < 600 + 30, oldest


def test_an_empty_queue_has_age_zero(client):
    samples = scrape(client)

    assert sample(samples, "styleq_queue_depth") == 0 and sample(samples, "styleq_queue_oldest_job_age_seconds") == 0


def test_wait_and_run_times_are_histograms_of_the_job_rows(app, client, keys):
    owner = keys.ids["alice"]
    # Waits of 4, 25 and 700 s; runs of 40 s (succeeded), 3 s (failed); one still running; one never started.
    add_job(app, owner, created_at=ago(1000), status="succeeded", started_at=ago(996), finished_at=ago(956))
    add_job(app, owner, created_at=ago(900), status="failed", started_at=ago(875), finished_at=ago(872))
    add_job(app, owner, created_at=ago(800), status="running", started_at=ago(100))
    add_job(app, owner, created_at=ago(50))

    samples = scrape(client)

    wait = {
        le: sample(samples, "styleq_job_queue_wait_seconds_bucket", le=le)
        for le in ("2.5", "5.0", "10.0", "30.0", "600.0", "1800.0", "+Inf")
    }
    assert wait == {"2.5": 0, "5.0": 1, "10.0": 1, "30.0": 2, "600.0": 2, "1800.0": 3, "+Inf": 3}
    assert sample(samples, "styleq_job_queue_wait_seconds_count") == 3
    assert sample(samples, "styleq_job_queue_wait_seconds_sum") == pytest.approx(729, abs=0.01)
    assert sample(samples, "styleq_job_run_seconds_count", status="succeeded") == 1
    assert sample(samples, "styleq_job_run_seconds_bucket", status="succeeded", le="30.0") == 0
    assert sample(samples, "styleq_job_run_seconds_bucket", status="succeeded", le="60.0") == 1
    assert sample(samples, "styleq_job_run_seconds_sum", status="succeeded") == pytest.approx(40, abs=0.01)
    assert sample(samples, "styleq_job_run_seconds_bucket", status="failed", le="5.0") == 1
    assert sample(samples, "styleq_job_run_seconds_count", status="canceled") == 0


def test_storage_bytes_are_the_files_of_each_kind(app, client, settings):
    (settings.storage_path / "uploads" / "ab").mkdir(parents=True)
    (settings.storage_path / "uploads" / "ab" / ("ab" + "0" * 62)).write_bytes(b"x" * 1000)
    job_folder = settings.storage_path / "jobs" / "cd" / ("cd" + "0" * 30)
    job_folder.mkdir(parents=True)
    (job_folder / "result.png").write_bytes(b"x" * 300)
    (job_folder / "preview.jpg").write_bytes(b"x" * 20)

    samples = scrape(client)

    assert sample(samples, "styleq_storage_bytes", kind="uploads") == 1000
    assert sample(samples, "styleq_storage_bytes", kind="results") == 300
    assert sample(samples, "styleq_storage_bytes", kind="previews") == 20


def test_requests_are_counted_by_endpoint_method_and_status(client, keys):
    before = scrape(client)
    for _ in range(3):
        client.get("/healthz")
    client.get("/v1/jobs/0123456789abcdef0123456789abcdef", headers=keys.headers("alice"))

    after = scrape(client)

    def delta(name, **labels):
        key = (name, frozenset(labels.items()))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("styleq_http_requests_total", method="GET", endpoint="health.healthz", status="200") == 3
    assert delta("styleq_http_requests_total", method="GET", endpoint="v1.jobs.show_job", status="404") == 1
    assert delta("styleq_http_request_duration_seconds_count", endpoint="health.healthz") == 3


def test_webhook_deliveries_are_counted_by_outcome(app, client, keys):
    assert {sample(scrape(client), "styleq_webhook_deliveries", outcome=o) for o in ("pending", "delivered", "failed")} == {0}
    job_id = add_job(app, keys.ids["alice"], status="succeeded", finished_at=ago(5))
    with session_scope(app.extensions["styleq"].session_factory) as session:
        for number, status in enumerate(("delivered", "delivered", "failed", "pending")):
            session.add(
                WebhookDelivery(
                    job_id=job_id, event=WebhookEvent.SUCCEEDED, message_id=f"msg_{number}", body="{}", status=DeliveryStatus(status)
                )
            )

    samples = scrape(client)

    assert sample(samples, "styleq_webhook_deliveries", outcome="delivered") == 2
    assert sample(samples, "styleq_webhook_deliveries", outcome="failed") == 1
    assert sample(samples, "styleq_webhook_deliveries", outcome="pending") == 1


def test_metrics_need_the_token_when_one_is_set(settings):
    settings.metrics_token = "scrape-secret"
    app = create_app(settings)
    client = app.test_client()
    try:
        assert_error(client.get("/metrics"), 401, "invalid_token")
        assert_error(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "invalid_token")
        assert "styleq_jobs" in {name for name, _ in scrape(client, Authorization="Bearer scrape-secret")}
    finally:
        app.extensions["styleq"].close()


def test_an_unreachable_database_says_so_and_still_answers(tmp_path):
    from styleq.shared.adapters.settings import Settings

    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/nothing",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
    )
    app = create_app(settings)
    try:
        samples = scrape(app.test_client())
    finally:
        app.extensions["styleq"].close()

    assert sample(samples, "styleq_database_up") == 0
    assert not any(name.startswith("styleq_jobs") for name, _ in samples)
