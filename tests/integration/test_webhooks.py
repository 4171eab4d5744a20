"""Webhooks end to end: jobs on real worker processes tell receivers on this machine (http.server threads)
of their events, signed as Standard Webhooks says, retried until taken, never slowing the job; on both backends."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
import standardwebhooks

from styleq.cli.service import make_key_with_webhook_secret
from styleq.shared.adapters.settings import Settings
from tests.receivers import Receiver, verify
from tests.services import SECRET_KEY, Client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
SMALL_JOB = {"size": [32, 48], "iterations": 30}


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**options) -> Receiver:
        made.append(Receiver(**options))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def client_and_secret(service) -> tuple[Client, str]:
    """A new API key, and its webhook secret, as `styleq keys create` prints them."""
    token, secret = make_key_with_webhook_secret(
        Settings(database_url=service.database_url, secret_key=SECRET_KEY), f"hooks-{uuid.uuid4().hex[:6]}"
    )
    return Client(service.url, token), secret


def seconds_run(job: dict) -> float:
    return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()


def test_a_receiver_verifies_every_delivery_s_signature_and_timestamp(service, images_dir, client_and_secret, receivers):
    client, secret = client_and_secret
    receiver = receivers()
    response = client.submit(
        images_dir / "rainier.jpg",
        images_dir / "autumn-oak.jpg",
        SMALL_JOB,
        fields={"webhook_url": receiver.url, "webhook_events": "running,checkpoint,succeeded"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    assert client.wait_for(job_id, lambda j: j["status"] not in ("queued", "running"))["status"] == "succeeded"
    requests = receiver.wait_for(lambda got: any(b'"job.succeeded"' in r.body for r in got))

    events = [verify(secret, request) for request in requests]
    assert {"job.running", "job.succeeded"} <= {event["type"] for event in events}
    assert all(event["data"]["id"] == job_id and event["timestamp"].endswith("Z") for event in events)
    succeeded = next(event for event in events if event["type"] == "job.succeeded")
    assert succeeded["data"]["status"] == "succeeded" and succeeded["data"]["progress"] == 1.0 and succeeded["data"]["iteration"] == 30
    with pytest.raises(standardwebhooks.WebhookVerificationError):  # nobody else's secret signs them
        standardwebhooks.Webhook(base64.b64encode(b"x" * 32).decode()).verify(requests[0].body, requests[0].headers)
    job = client.wait_for(job_id, lambda j: all(d["status"] == "delivered" for d in j["webhook"]["deliveries"]))
    assert {d["id"] for d in job["webhook"]["deliveries"]} == {r.headers["webhook-id"] for r in requests}
    assert all(d["attempts"] == 1 and d["last_status_code"] == 204 for d in job["webhook"]["deliveries"])


def test_a_receiver_failing_twice_gets_the_event_three_times_and_the_job_records_three_attempts(
    service, images_dir, client_and_secret, receivers
):
    client, secret = client_and_secret
    receiver = receivers(answers=[500, 500])
    job_id = client.submit(
        images_dir / "rainier.jpg",
        images_dir / "autumn-oak.jpg",
        SMALL_JOB,
        fields={"webhook_url": receiver.url, "webhook_events": "succeeded"},
    ).json()["id"]

    requests = receiver.wait_for(lambda got: len(got) >= 3)
    job = client.wait_for(job_id, lambda j: j["webhook"]["deliveries"] and j["webhook"]["deliveries"][0]["status"] != "pending")

    assert len(requests) == 3 and len({r.headers["webhook-id"] for r in requests}) == 1
    assert [verify(secret, r)["type"] for r in requests] == ["job.succeeded"] * 3
    # STYLEQ_WEBHOOK_BACKOFF_SECONDS=0.3: waits of at least 0.3 and 0.6 s.
    assert requests[1].at - requests[0].at >= 0.3 and requests[2].at - requests[1].at >= 0.6
    [delivery] = job["webhook"]["deliveries"]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3
    assert delivery["last_status_code"] == 204 and delivery["last_error"] is None and delivery["id"] == requests[0].headers["webhook-id"]


def test_a_slow_receiver_does_not_slow_the_job(service, images_dir, client_and_secret, receivers):
    client, secret = client_and_secret
    receiver = receivers(delay=5.0)
    job = {**SMALL_JOB, "iterations": 60}
    # The two at once, one on each worker: whatever else loads this machine loads both alike.
    plain_id = client.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", job).json()["id"]
    hooked_id = client.submit(
        images_dir / "rainier.jpg",
        images_dir / "autumn-oak.jpg",
        {**job, "seed": 1},
        fields={"webhook_url": receiver.url, "webhook_events": "running,checkpoint,succeeded"},
    ).json()["id"]
    plain, hooked = (client.wait_for(job_id, lambda j: j["status"] not in ("queued", "running")) for job_id in (plain_id, hooked_id))

    assert plain["status"] == hooked["status"] == "succeeded" and plain["worker"] != hooked["worker"]
    print(
        f"\n{service.backend}: job alone {seconds_run(plain):.2f} s, beside it with a receiver taking 5 s a request {seconds_run(hooked):.2f} s"
    )
    # Sent from the job's loop, the running event alone would add 5 s, and each checkpoint event (one a second) 5 more.
    assert seconds_run(hooked) < 1.25 * seconds_run(plain) + 2.0
    running = receiver.wait_for(lambda got: any(b'"job.running"' in r.body for r in got))
    first = next(r for r in running if b'"job.running"' in r.body)
    assert first.at < datetime.fromisoformat(hooked["finished_at"]).timestamp(), "delivered while the job ran"
    assert verify(secret, first)["data"]["id"] == hooked_id


def test_webhooks_to_internal_addresses_are_refused_at_submit(service, images_dir):
    for url in ("http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/", "http://192.168.0.10/"):
        response = service.alice.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", SMALL_JOB, fields={"webhook_url": url})

        assert response.status_code == 422, (url, response.text)
        assert response.json()["error"]["code"] == "invalid_webhook_url" and "address" in response.json()["error"]["message"]
