"""Event streams under load, and the open-stream cap across API processes.

500 open event streams from 50 keys leave every other request fast and keep a running job's checkpoints
flowing, on `styleq up` (the embedded SQLite default) and on the compose file's API command with
Postgres + Redis, over loopback, through bench/streams.py (which prints the same figures for docs/PERFORMANCE.md).
A killed API process's stream slots come free after STYLEQ_STREAM_SLOT_TTL_SECONDS.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
import requests

from bench.streams import make_keys, run, submit
from styleq.shared.adapters.migrate import upgrade_database
from styleq.shared.adapters.settings import Settings
from tests.services import REDIS_URL, SECRET_KEY, ensure_redis, fresh_postgres_database, start_api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
KEYS, STREAMS_PER_KEY, HOLD_SECONDS = 50, 10, 20.0
SLOT_TTL_SECONDS = 6.0


# A load test: it measures answer times, so it runs in the full tier, alone on the machine (`make test-full`);
# each deployment's run (start, open 500 streams, hold them, stop) is bounded by the timeout.
@pytest.mark.full
@pytest.mark.alone
@pytest.mark.timeout(420)
@pytest.mark.parametrize("backend", ["embedded", "postgres+redis"])
def test_hundreds_of_streams_leave_other_requests_fast_and_refuse_a_key_past_its_cap(backend, tmp_path, models_dir, caffe_weights):
    options = {"keys": KEYS, "streams_per_key": STREAMS_PER_KEY, "hold_seconds": HOLD_SECONDS, "model_dir": str(models_dir)}
    if backend == "embedded":
        figures = run(backend, tmp_path, **options)
    else:
        ensure_redis()
        with fresh_postgres_database() as database_url:
            figures = run(backend, tmp_path, database_url=database_url, broker_url=REDIS_URL, **options)
    shown = json.dumps(figures, indent=1)

    assert figures["streams_answered_200"] == KEYS * STREAMS_PER_KEY and figures["streams_ended_early"] == 0, shown
    assert figures["streams_failed"] == {}, shown
    # /healthz, the sign-in page and another client's /v1/jobs, asked all along: every one answered 200 within a second.
    assert figures["probe_requests"] >= 30 and figures["probe_slow_or_failed"] == [], shown
    # The running job's streams kept getting checkpoints through the whole hold, up to its last second or so.
    assert figures["checkpoints_per_running_stream_during_hold_min"] >= 10, shown
    assert figures["last_checkpoint_age_at_end_max_s"] < 5, shown
    for refusal in figures["beyond_cap"]:
        assert refusal["status"] == 429 and refusal["retry_after"] == "30", shown
        assert json.loads(refusal["body"])["error"]["code"] == "too_many_streams", shown


def stream_status(url: str, key: str, job_id: str) -> tuple[int, requests.Response]:
    """Ask for the job's event stream; return the status and the open response (close it to end the stream)."""
    response = requests.get(f"{url}/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {key}"}, stream=True, timeout=15)
    return response.status_code, response


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_killed_api_process_frees_its_stream_slots_after_their_expiry(store, tmp_path, models_dir, caffe_weights):
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith("STYLEQ_")},
        "STYLEQ_DATA_DIR": str(tmp_path / "data"),
        "STYLEQ_MODEL_DIR": str(models_dir),
        "STYLEQ_SECRET_KEY": SECRET_KEY,  # the one start_api gives the API
        "STYLEQ_MAX_STREAMS_PER_KEY": "1",
        "STYLEQ_STREAM_SLOT_TTL_SECONDS": str(SLOT_TTL_SECONDS),
        "STYLEQ_MAX_REQUESTS_PER_MINUTE": "0",
        "STYLEQ_QUEUE": f"styleq-slots-{uuid.uuid4().hex[:8]}",
    }
    if store == "redis":
        ensure_redis()
        environment["STYLEQ_BROKER_URL"] = REDIS_URL
    settings = Settings(data_dir=tmp_path / "data", secret_key=SECRET_KEY, broker_url=environment.get("STYLEQ_BROKER_URL"))
    settings.data_dir.mkdir(parents=True)
    upgrade_database(settings.database)
    (key,), _admin = make_keys(environment, 1)
    # Two API deployments of one host (one store): A holds the key's one stream, B counts it.
    first, first_url = start_api(environment, tmp_path, "api-a", worker_class="gevent")
    second, second_url = start_api(environment, tmp_path, "api-b", worker_class="gevent")
    try:
        job_id = submit(first_url, key, {"size": [32, 48], "iterations": 10})  # no worker: it stays queued, its stream open
        status, held = stream_status(first_url, key, job_id)
        assert status == 200, held.text
        status, refused = stream_status(second_url, key, job_id)
        assert status == 429 and refused.json()["error"]["code"] == "too_many_streams"
        refused.close()

        first.kill()  # SIGKILL: A never gives its slot back
        killed = time.monotonic()
        status, refused = stream_status(second_url, key, job_id)
        refused.close()
        assert status == 429, "the killed process's slot must still count until it expires"
        while True:
            status, response = stream_status(second_url, key, job_id)
            response.close()
            if status == 200:
                break
            assert status == 429, response.text
            assert time.monotonic() - killed < SLOT_TTL_SECONDS + 20, "the killed process's slot never expired"
            time.sleep(0.5)
        # Not before the last renewal's expiry (renewed every quarter of it, so at least three quarters after the kill).
        assert time.monotonic() - killed >= SLOT_TTL_SECONDS * 0.75 - 0.5
        held.close()
    finally:
        for process in (first, second):
            process.kill()
            process.log.close()
