"""GET /v1/jobs/<id>/events: the Server-Sent Events stream of a job, read to its end."""

from __future__ import annotations

import json
import threading
import time

from styleq.api.stream_hub import read_job, read_jobs
from styleq.shared.adapters.db import session_scope
from tests.api.support import add_checkpoints, add_job, assert_error, set_job
from tests.api.test_api_jobs import statements_counted


def read_stream(client, path, headers):
    """Read the whole stream; return its events as (event, id, data) and its comment lines."""
    with client.get(path, headers=headers) as response:
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.mimetype == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache" and response.headers["X-Accel-Buffering"] == "no"
        text = response.get_data(as_text=True)
    events, comments = [], []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line.startswith(":"):
                comments.append(line)
            else:
                name, _, value = line.partition(": ")
                fields[name] = value
        if "event" in fields:
            events.append((fields["event"], int(fields["id"]), json.loads(fields["data"])))
    return events, comments


def test_stream_of_a_finished_job_sends_status_checkpoints_final_status_and_end(app, client, keys):
    job_id = add_job(app, keys.ids["alice"], status="running")
    add_checkpoints(app, job_id, [10, 20, 30])
    set_job(app, job_id, status="succeeded", iteration=30)

    events, _ = read_stream(client, f"/v1/jobs/{job_id}/events", keys.headers("alice"))

    assert [(event, event_id) for event, event_id, _ in events] == [
        ("status", 0),
        ("checkpoint", 10),
        ("checkpoint", 20),
        ("checkpoint", 30),
        ("status", 30),
        ("end", 30),
    ]
    assert events[0][2]["id"] == job_id
    assert events[1][2] == {"iteration": 10, "elapsed_s": 1.0, "content": 0.1, "style": 0.2, "tv": 0.5, "total": 0.8, "scale": 1.0}
    assert events[-2][2]["status"] == "succeeded" and events[-1][2] == {"status": "succeeded"}


def test_stream_resumes_after_last_event_id_or_after_query(app, client, keys):
    job_id = add_job(app, keys.ids["alice"], status="running")
    add_checkpoints(app, job_id, [10, 20, 30])
    set_job(app, job_id, status="failed", error_code="engine_error", error_message="out of memory")
    alice = keys.headers("alice")

    resumed, _ = read_stream(client, f"/v1/jobs/{job_id}/events", {**alice, "Last-Event-ID": "20"})
    after, _ = read_stream(client, f"/v1/jobs/{job_id}/events?after=10", alice)

    assert [(event, event_id) for event, event_id, _ in resumed] == [("status", 20), ("checkpoint", 30), ("status", 30), ("end", 30)]
    assert resumed[-2][2]["error"] == {"code": "engine_error", "message": "out of memory"}
    assert [event_id for event, event_id, _ in after if event == "checkpoint"] == [20, 30]
    assert_error(client.get(f"/v1/jobs/{job_id}/events?after=soon", headers=alice), 400, "invalid_query")
    # A bad `after` is refused even beside a good Last-Event-ID (found by schemathesis).
    assert_error(client.get(f"/v1/jobs/{job_id}/events?after=-1", headers={**alice, "Last-Event-ID": "0"}), 400, "invalid_query")


def test_stream_follows_a_running_job_as_checkpoints_land(app, client, keys):
    app.config.update(EVENTS_KEEPALIVE_SECONDS=0.05)
    job_id = add_job(app, keys.ids["alice"], status="queued")

    def work() -> None:
        time.sleep(0.2)
        set_job(app, job_id, status="running")
        time.sleep(0.2)
        add_checkpoints(app, job_id, [10])
        time.sleep(0.2)
        add_checkpoints(app, job_id, [20])
        set_job(app, job_id, status="succeeded", iteration=20)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        events, comments = read_stream(client, f"/v1/jobs/{job_id}/events", keys.headers("alice"))
    finally:
        worker.join()

    statuses = [data["status"] for event, _, data in events if event == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert [(event, event_id) for event, event_id, _ in events if event != "status"] == [
        ("checkpoint", 10),
        ("checkpoint", 20),
        ("end", 20),
    ]
    assert events[-1][0] == "end"
    assert ": keep-alive" in comments


def test_stream_ends_when_the_job_is_deleted(app, client, keys):
    job_id = add_job(app, keys.ids["alice"], status="running")

    def delete_soon() -> None:
        time.sleep(0.2)
        assert client.delete(f"/v1/jobs/{job_id}", headers=keys.headers("alice")).status_code == 204

    deleter = threading.Thread(target=delete_soon)
    deleter.start()
    try:
        events, _ = read_stream(client, f"/v1/jobs/{job_id}/events", keys.headers("alice"))
    finally:
        deleter.join()

    # Deleting a running job asks it to cancel first, which the stream may report before the row goes.
    assert events[0][0] == "status" and not events[0][2]["cancel_requested"]
    assert all(event == "status" and data["cancel_requested"] for event, _, data in events[1:-1])
    assert events[-1][0] == "end" and events[-1][2]["status"] is None


def test_a_key_past_its_cap_of_open_streams_is_refused_until_one_closes(app, client, keys):
    app.extensions["styleq"].settings.max_streams_per_key = 2
    job_id = add_job(app, keys.ids["alice"], status="running")
    path, alice = f"/v1/jobs/{job_id}/events", keys.headers("alice")

    held = [client.get(path, headers=alice, buffered=False) for _ in range(2)]
    refused = client.get(path, headers=alice)
    bob_job = add_job(app, keys.ids["bob"], status="running")
    other_key = client.get(f"/v1/jobs/{bob_job}/events", headers=keys.headers("bob"), buffered=False)
    held[0].close()
    after_one_closed = client.get(path, headers=alice, buffered=False)

    assert [response.status_code for response in held] == [200, 200]
    assert_error(refused, 429, "too_many_streams")
    assert refused.headers["Retry-After"] == "30"
    assert other_key.status_code == 200, "the cap is per key"
    assert after_one_closed.status_code == 200, "a closed stream gives its slot back"
    for response in (held[1], other_key, after_one_closed):
        response.close()


def test_the_stream_hub_reads_any_number_of_watched_jobs_in_the_same_few_queries(app, keys):
    # One read per job was three queries each: 50 watched jobs were 150 a poll, each a wait under gevent.
    factory = app.extensions["styleq"].session_factory
    first = add_job(app, keys.ids["alice"], status="queued")
    add_checkpoints(app, first, [2, 4])
    with session_scope(factory) as session, statements_counted(app.extensions["styleq"].engine) as for_one:
        read_jobs(session, {first: 0})
    job_ids = [first] + [add_job(app, keys.ids["bob"], status="queued" if number % 2 else "running") for number in range(19)]
    for number, job_id in enumerate(job_ids[1:], start=1):
        add_checkpoints(app, job_id, list(range(1, number + 1)))
    afters = {job_id: number // 2 for number, job_id in enumerate(job_ids)} | {"deleted-job": 0}

    with session_scope(factory) as session, statements_counted(app.extensions["styleq"].engine) as for_twenty:
        together = read_jobs(session, afters)
    with session_scope(factory) as session:
        one_by_one = {job_id: read_job(session, job_id, after) for job_id, after in afters.items()}

    assert len(for_twenty) == len(for_one), f"{len(for_twenty)} queries for 20 jobs, {len(for_one)} for one"
    assert together == one_by_one and together["deleted-job"] == (None, [])
    assert [checkpoint["iteration"] for checkpoint in together[job_ids[6]][1]] == [4, 5, 6]
