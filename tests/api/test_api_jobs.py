"""Listing, showing, checkpoints, cancel and delete, and who may see which job."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine
from werkzeug.test import TestResponse

from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import DeliveryStatus, WebhookDelivery, WebhookEvent
from tests.api.support import (
    add_checkpoints,
    add_job,
    assert_error,
    count_jobs,
    image_bytes,
    minutes_ago,
    submit,
    upload_files,
)


def test_list_shows_own_jobs_newest_first_a_page_at_a_time(app, client, keys):
    ids = [add_job(app, keys.ids["alice"], created_at=minutes_ago(10 - minute)) for minute in range(5)]
    add_job(app, keys.ids["bob"])
    newest_first = ids[::-1]

    first = client.get("/v1/jobs?limit=2", headers=keys.headers("alice")).get_json()
    second = client.get(f"/v1/jobs?limit=2&cursor={first['next_cursor']}", headers=keys.headers("alice")).get_json()
    third = client.get(f"/v1/jobs?limit=2&cursor={second['next_cursor']}", headers=keys.headers("alice")).get_json()

    assert [job["id"] for job in first["jobs"]] == newest_first[:2]
    assert [job["id"] for job in second["jobs"]] == newest_first[2:4]
    assert [job["id"] for job in third["jobs"]] == newest_first[4:] and third["next_cursor"] is None


def test_list_filters_by_status(app, client, keys):
    done = add_job(app, keys.ids["alice"], status="succeeded")
    add_job(app, keys.ids["alice"], status="queued")

    body = client.get("/v1/jobs?status=succeeded", headers=keys.headers("alice")).get_json()

    assert [job["id"] for job in body["jobs"]] == [done]


def test_a_page_of_many_queued_jobs_costs_the_same_few_queries_as_a_page_of_one(app, client, keys):
    # Queue positions and webhook deliveries were read per job: 50 queued jobs were over 100 queries, and under
    # gevent each one waits its turn behind every open event stream, so an admin's list took seconds.
    first = add_job(
        app, keys.ids["alice"], created_at=minutes_ago(60), webhook_url="https://example.com/hook", webhook_events=["succeeded"]
    )
    add_deliveries(app, first, 2)
    one_job, _ = count_queries(app, lambda: client.get("/v1/jobs?limit=100", headers=keys.headers("admin")))
    for minute in range(49):
        job_id = add_job(
            app,
            keys.ids["bob" if minute % 2 else "alice"],
            created_at=minutes_ago(59 - minute),
            webhook_url="https://example.com/hook",
            webhook_events=["succeeded"],
        )
        add_deliveries(app, job_id, 2)

    queries, response = count_queries(app, lambda: client.get("/v1/jobs?limit=100", headers=keys.headers("admin")))

    shown = response.get_json()["jobs"]
    assert len(shown) == 50 and queries == one_job, f"{queries} queries for 50 jobs, {one_job} for one"
    # Newest first: the newest queued job is 50th in the queue, the oldest first; each shows its two deliveries, newest first.
    assert [job["queue_position"] for job in shown] == list(range(50, 0, -1))
    assert all(
        [delivery["id"] for delivery in job["webhook"]["deliveries"]] == [f"msg_{job['id']}_1", f"msg_{job['id']}_0"] for job in shown
    )


def add_deliveries(app: Flask, job_id: str, count: int) -> None:
    """Record `count` webhook deliveries of the job, a minute apart, as a worker would."""
    with session_scope(app.extensions["styleq"].session_factory) as session:
        for number in range(count):
            session.add(
                WebhookDelivery(
                    job_id=job_id,
                    event=WebhookEvent.SUCCEEDED,
                    message_id=f"msg_{job_id}_{number}",
                    body="{}",
                    status=DeliveryStatus.DELIVERED,
                    attempts=1,
                    created_at=minutes_ago(30 - number),
                )
            )


def count_queries(app: Flask, request: Callable[[], TestResponse]) -> tuple[int, TestResponse]:
    """Return how many SQL statements the app's engine ran during `request()`, and its response."""
    with statements_counted(app.extensions["styleq"].engine) as statements:
        response = request()
    assert response.status_code == 200, response.get_data(as_text=True)
    return len(statements), response


@contextmanager
def statements_counted(engine: Engine) -> Iterator[list[str]]:
    """Collect every SQL statement `engine` runs inside the block."""
    statements: list[str] = []

    def record(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.mark.parametrize(
    "query",
    [
        "status=done",
        "limit=0",
        "limit=101",
        "limit=ten",
        "cursor=0123456789abcdef0123456789abcdef",
        # Given empty, or more than once, an argument says nothing clear: refused rather than guessed.
        "status=",
        "cursor=",
        "limit=",
        "limit=5&limit=6",
        "status=queued&status=running",
    ],
)
def test_list_refuses_bad_query(client, keys, query):
    assert_error(client.get(f"/v1/jobs?{query}", headers=keys.headers("alice")), 400, "invalid_query")


def test_admin_key_sees_every_clients_jobs(app, client, keys):
    mine = add_job(app, keys.ids["alice"], created_at=minutes_ago(2))
    theirs = add_job(app, keys.ids["bob"], created_at=minutes_ago(1))

    listed = client.get("/v1/jobs", headers=keys.headers("admin")).get_json()

    assert [job["id"] for job in listed["jobs"]] == [theirs, mine]
    assert client.get(f"/v1/jobs/{mine}", headers=keys.headers("admin")).status_code == 200


def test_other_client_gets_404_on_every_job_route_and_does_not_see_it(app, client, keys):
    job_id = submit(client, keys.headers("alice")).get_json()["id"]
    bob = keys.headers("bob")
    routes = [
        ("get", ""),
        ("get", "/checkpoints"),
        ("get", "/events"),
        ("get", "/result"),
        ("get", "/preview"),
        ("get", "/content"),
        ("get", "/style"),
        ("post", "/cancel"),
        ("delete", ""),
    ]

    for method, suffix in routes:
        assert_error(getattr(client, method)(f"/v1/jobs/{job_id}{suffix}", headers=bob), 404, "not_found")
    assert client.get("/v1/jobs", headers=bob).get_json()["jobs"] == []
    assert_error(client.get(f"/v1/jobs?cursor={job_id}", headers=bob), 400, "invalid_query")
    shown = client.get(f"/v1/jobs/{job_id}", headers=keys.headers("alice")).get_json()
    assert shown["status"] == "queued" and not shown["cancel_requested"]


def test_unknown_job_and_unknown_route_get_json_404(client, keys):
    assert_error(client.get("/v1/jobs/0123456789abcdef0123456789abcdef", headers=keys.headers("alice")), 404, "not_found")
    assert_error(client.get("/v1/nothing-here", headers=keys.headers("alice")), 404, "not_found")


def test_wrong_method_gets_json_405_with_allow(client, keys):
    response = client.put("/v1/jobs", headers=keys.headers("alice"))

    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_checkpoints_after_an_iteration(app, client, keys):
    job_id = add_job(app, keys.ids["alice"], status="running")
    add_checkpoints(app, job_id, [10, 20, 30, 40])

    everything = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=keys.headers("alice")).get_json()
    later = client.get(f"/v1/jobs/{job_id}/checkpoints?after=20&limit=1", headers=keys.headers("alice")).get_json()

    assert [point["iteration"] for point in everything["checkpoints"]] == [10, 20, 30, 40]
    assert later["checkpoints"] == [
        {"iteration": 30, "elapsed_s": 3.0, "content": 1 / 30, "style": 2 / 30, "tv": 0.5, "total": 0.6, "scale": 1.0}
    ]
    assert_error(client.get(f"/v1/jobs/{job_id}/checkpoints?after=-1", headers=keys.headers("alice")), 400, "invalid_query")
    assert_error(client.get(f"/v1/jobs/{job_id}/checkpoints?after=", headers=keys.headers("alice")), 400, "invalid_query")
    assert_error(client.get(f"/v1/jobs/{job_id}/events?after=", headers=keys.headers("alice")), 400, "invalid_query")


def test_running_job_shows_progress_and_losses(app, client, keys):
    job_id = add_job(
        app,
        keys.ids["alice"],
        status="running",
        iteration=25,
        content_loss=1.0,
        style_loss=2.0,
        tv_loss=0.5,
        total_loss=3.5,
        elapsed_s=4.0,
        attempts=1,
        lease_owner="w1@host",
        gpu="cuda:0",
        started_at=minutes_ago(1),
    )

    job = client.get(f"/v1/jobs/{job_id}", headers=keys.headers("alice")).get_json()

    assert job["progress"] == 0.25 and job["iteration"] == 25 and job["iterations"] == 100
    assert job["losses"] == {"content": 1.0, "style": 2.0, "tv": 0.5, "total": 3.5}
    assert job["worker"] == "w1@host" and job["gpu"] == "cuda:0" and job["attempts"] == 1
    assert job["queue_position"] is None and job["started_at"].endswith("Z")


def test_cancel_ends_a_queued_job_at_once(client, keys):
    job_id = submit(client, keys.headers("alice")).get_json()["id"]

    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=keys.headers("alice"))

    assert response.status_code == 202
    job = response.get_json()
    assert job["status"] == "canceled" and job["cancel_requested"] and job["finished_at"] is not None


def test_cancel_asks_a_running_job_to_stop(app, client, keys):
    job_id = add_job(app, keys.ids["alice"], status="running")

    job = client.post(f"/v1/jobs/{job_id}/cancel", headers=keys.headers("alice")).get_json()

    assert job["status"] == "running" and job["cancel_requested"]


def test_cancel_of_a_finished_job_is_a_conflict(app, client, keys):
    job_id = add_job(app, keys.ids["alice"], status="succeeded")

    assert_error(client.post(f"/v1/jobs/{job_id}/cancel", headers=keys.headers("alice")), 409, "job_finished")


def test_delete_removes_the_row_its_checkpoints_files_and_unshared_uploads(app, client, keys, settings):
    alice = keys.headers("alice")
    shared_style = image_bytes((1, 1, 1))
    doomed = submit(client, alice, content=image_bytes((2, 2, 2)), style=shared_style).get_json()["id"]
    kept = submit(client, alice, content=image_bytes((3, 3, 3)), style=shared_style).get_json()["id"]
    add_checkpoints(app, doomed, [10])
    storage = app.extensions["styleq"].storage
    storage.write_job_file(doomed, "preview.jpg", image_bytes(kind="JPEG"))
    assert len(upload_files(settings)) == 3

    response = client.delete(f"/v1/jobs/{doomed}", headers=alice)

    assert response.status_code == 204 and response.data == b""
    assert_error(client.get(f"/v1/jobs/{doomed}", headers=alice), 404, "not_found")
    assert count_jobs(app) == 1
    assert not storage.job_path(doomed, "preview.jpg").parent.exists()
    assert len(upload_files(settings)) == 2  # the kept job's content and the shared style
    with client.get(f"/v1/jobs/{kept}/style", headers=alice) as response:
        assert response.status_code == 200 and response.data == shared_style


def test_delete_of_a_running_job_cancels_and_removes_it(app, client, keys):
    job_id = add_job(app, keys.ids["alice"], status="running")
    add_checkpoints(app, job_id, [10, 20])

    assert client.delete(f"/v1/jobs/{job_id}", headers=keys.headers("alice")).status_code == 204
    assert count_jobs(app) == 0


def test_every_v1_route_needs_a_key(app, client, keys):
    job_id = add_job(app, keys.ids["alice"])
    for path in ("/v1/jobs", f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events", f"/v1/jobs/{job_id}/result"):
        response = client.get(path)
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(client.delete(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer sq_wrong"}), 401, "invalid_token")
    assert count_jobs(app) == 1
