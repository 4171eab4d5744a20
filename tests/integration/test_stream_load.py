"""The open-stream cap across API processes: a killed API process's stream slots come free after STYLEQ_STREAM_SLOT_TTL_SECONDS."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from bench.streams import make_keys, submit
from shared.migrate import upgrade_database
from shared.settings import Settings
from tests.services import REDIS_URL, Process, ensure_redis, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
SLOT_TTL_SECONDS = 6.0


def start_gevent_api(environment: dict[str, str], log_dir: Path, name: str) -> tuple[Process, str]:
    """Start the API as `styleq up` does (gunicorn's gevent worker) on a free loopback port; return it and its URL."""
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_config", "--bind", f"127.0.0.1:{port}", "--workers", "1",
        "--worker-class", "gevent", "--worker-connections", "100", "--graceful-timeout", "2", "--forwarded-allow-ips", "", "api:create_app()",
    ]
    process, url = Process(name, command, environment, log_dir), f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=2).ok:
                return process, url
        except requests.RequestException:
            pass
        if not process.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start:\n{process.output()}")
        time.sleep(0.2)


def stream_status(url: str, key: str, job_id: str) -> tuple[int, requests.Response]:
    """Ask for the job's event stream; return the status and the open response (close it to end the stream)."""
    response = requests.get(f"{url}/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {key}"}, stream=True, timeout=15)
    return response.status_code, response


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_killed_api_process_frees_its_stream_slots_after_their_expiry(store, tmp_path, models_dir, caffe_weights):
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith("STYLEQ_")},
        "STYLEQ_DATA_DIR": str(tmp_path / "data"), "STYLEQ_MODEL_DIR": str(models_dir), "STYLEQ_SECRET_KEY": "styleq-tests-slots",
        "STYLEQ_MAX_STREAMS_PER_KEY": "1", "STYLEQ_STREAM_SLOT_TTL_SECONDS": str(SLOT_TTL_SECONDS),
        "STYLEQ_MAX_REQUESTS_PER_MINUTE": "0", "STYLEQ_QUEUE": f"styleq-slots-{uuid.uuid4().hex[:8]}",
    }
    if store == "redis":
        ensure_redis()
        environment["STYLEQ_BROKER_URL"] = REDIS_URL
    settings = Settings(data_dir=tmp_path / "data", secret_key="styleq-tests-slots", broker_url=environment.get("STYLEQ_BROKER_URL"))
    settings.data_dir.mkdir(parents=True)
    upgrade_database(settings.database)
    (key,), _admin = make_keys(environment, 1)
    # Two API deployments of one host (one store): A holds the key's one stream, B counts it.
    first, first_url = start_gevent_api(environment, tmp_path, "api-a")
    second, second_url = start_gevent_api(environment, tmp_path, "api-b")
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
