"""A job's webhook through the API: refused at submit unless it may be called, shown with its deliveries on the job and its page."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from flask import Flask

from tests.api.support import assert_error, count_jobs, submit, upload_files
from tests.api.test_dashboard_pages import signed_in

PARAMS = '{"size": [32, 48], "iterations": 20}'


@pytest.fixture
def settings(settings):
    """The API tests' settings, with one loopback address allowed (127.0.0.2: its neighbours stay refused)."""
    return settings.model_copy(update={"webhook_allowed_networks": (ip_network("127.0.0.2/32"),)})


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://10.0.0.1/hook", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://localhost:9/hook", "'localhost' resolves to 127.0.0.1, which is a loopback address"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback address"),
        ("gopher://example.com/", "http or https"),
        ("https://me:pw@example.com/hook", "credentials"),
    ],
)
def test_a_webhook_url_the_service_will_not_call_is_refused_at_submit_and_nothing_is_stored(client, keys, settings, url, words):
    response = submit(client, keys.headers("alice"), params=PARAMS, fields={"webhook_url": url})

    error = assert_error(response, 422, "invalid_webhook_url")
    assert words in error["message"]
    assert count_jobs(client.application) == 0 and upload_files(settings) == []


def test_unknown_events_or_events_without_a_url_are_refused(client, keys):
    unknown = submit(
        client, keys.headers("alice"), params=PARAMS, fields={"webhook_url": "http://10.0.0.1/", "webhook_events": "running,done"}
    )
    alone = submit(client, keys.headers("alice"), params=PARAMS, fields={"webhook_events": "running"})

    assert "done" in assert_error(unknown, 422, "invalid_webhook_events")["message"]
    assert "without a webhook_url" in assert_error(alone, 422, "invalid_webhook_events")["message"]


def test_a_job_shows_its_webhook_and_each_delivery(app: Flask, client, keys):
    response = submit(
        client,
        keys.headers("alice"),
        params=PARAMS,
        fields={"webhook_url": "http://127.0.0.2:9/hook", "webhook_events": "canceled,running"},
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    job = response.get_json()
    assert job["webhook"] == {"url": "http://127.0.0.2:9/hook", "events": ["running", "canceled"], "deliveries": []}
    assert submit(client, keys.headers("alice"), params=PARAMS).get_json()["webhook"] is None

    canceled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=keys.headers("alice")).get_json()

    [delivery] = canceled["webhook"]["deliveries"]
    assert delivery["event"] == "canceled" and delivery["status"] == "pending" and delivery["attempts"] == 0
    assert delivery["id"].startswith("msg_") and delivery["next_attempt_at"] and delivery["finished_at"] is None
    page = signed_in(app, keys, "alice").get(f"/jobs/{job['id']}").get_data(as_text=True)
    assert "http://127.0.0.2:9/hook" in page and "job.canceled" in page and 'data-delivery-status="pending"' in page


def test_the_webhook_is_part_of_an_idempotent_request(client, keys):
    headers = {**keys.headers("alice"), "Idempotency-Key": "k1"}
    first = submit(client, headers, params=PARAMS, fields={"webhook_url": "http://127.0.0.2:9/a"})
    again = submit(client, headers, params=PARAMS, fields={"webhook_url": "http://127.0.0.2:9/a"})
    other = submit(client, headers, params=PARAMS, fields={"webhook_url": "http://127.0.0.2:9/b"})

    assert (first.status_code, again.status_code) == (202, 200) and again.get_json()["id"] == first.get_json()["id"]
    assert "different webhook" in assert_error(other, 422, "idempotency_key_reused")["message"]


def test_running_again_from_the_dashboard_keeps_the_webhook(app: Flask, keys):
    job = submit(
        app.test_client(),
        keys.headers("alice"),
        params=PARAMS,
        fields={"webhook_url": "http://127.0.0.2:9/hook", "webhook_events": "succeeded"},
    ).get_json()
    browser = signed_in(app, keys, "alice")
    page = browser.get(f"/jobs/{job['id']}").get_data(as_text=True)
    token = page.split('name="csrf_token" value="')[1].split('"')[0]

    rerun = browser.post(f"/jobs/{job['id']}/rerun", data={"csrf_token": token})

    new_id = rerun.headers["Location"].rsplit("/", 1)[1]
    again = app.test_client().get(f"/v1/jobs/{new_id}", headers=keys.headers("alice")).get_json()
    assert new_id != job["id"] and again["webhook"]["url"] == "http://127.0.0.2:9/hook" and again["webhook"]["events"] == ["succeeded"]
