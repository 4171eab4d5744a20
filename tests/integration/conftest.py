"""A real API (gunicorn) and real Celery worker processes, on the embedded default and on Postgres + Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pytest

from styleq.shared.adapters.migrate import upgrade_database
from tests.integration.drills import drill, record  # noqa: F401 (the fault drills' fixtures: one deployment per drill module)
from tests.services import (
    Client,
    PrivatePostgres,
    PrivateRedis,
    Process,
    fresh_postgres_database,
    make_key,
    private_servers,
    start_api,
    start_worker,
)


@dataclass
class Service:
    """A running deployment: its settings environment, API URL, worker processes and two clients."""

    backend: str
    environment: dict[str, str]
    database_url: str
    url: str
    api: Process
    workers: list[Process]
    log_dir: Path
    alice: Client
    bob: Client
    admin: Client
    # The deployment's own servers (postgres+redis only), which the fault tests stop and start.
    postgres: PrivatePostgres | None = None
    redis: PrivateRedis | None = None


@pytest.fixture(scope="session", params=["embedded", "postgres+redis"])
def service(request, tmp_path_factory, caffe_weights, models_dir) -> Iterator[Service]:
    """Start the API and two workers on one backend; stop them after the session."""
    root = tmp_path_factory.mktemp(request.param.replace("+", "-"))
    environment = {
        **os.environ,
        "STYLEQ_DATA_DIR": str(root / "data"),
        "STYLEQ_MODEL_DIR": str(models_dir),
        "STYLEQ_QUEUE": f"styleq-test-{uuid.uuid4().hex[:8]}",
        # Quick previews and a short sweep, so the tests see them within seconds.
        "STYLEQ_PREVIEW_EVERY": "2",
        # Every second checkpoint saves a state, however fast the checkpoints come (the fault tests count on it).
        "STYLEQ_PREVIEW_MIN_SECONDS": "0",
        "STYLEQ_SWEEP_EVERY_SECONDS": "1",
        # A killed worker's job is taken over after 6 s of silence instead of two minutes.
        "STYLEQ_LEASE_SECONDS": "6",
        # A queued job whose message a broker crash lost is sent again after 8 s instead of ten minutes.
        "STYLEQ_REQUEUE_AFTER_SECONDS": "8",
        # Fair use off: wait_for polls ten times a second with one non-admin key for the whole session
        # (tests/api/test_api_limits.py covers the limits).
        "STYLEQ_MAX_REQUESTS_PER_MINUTE": "0",
        "STYLEQ_MAX_ACTIVE_JOBS": "0",
        # Webhooks to receivers on this machine (tests/integration/test_webhooks.py), retried within a second,
        # with a checkpoint event every second at most.
        "STYLEQ_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
        "STYLEQ_WEBHOOK_BACKOFF_SECONDS": "0.3",
        "STYLEQ_WEBHOOK_TIMEOUT_SECONDS": "10",
        "STYLEQ_WEBHOOK_CHECKPOINT_SECONDS": "1",
        "OMP_NUM_THREADS": "1",
    }
    with _servers(request.param) as servers, _database(servers) as database_url:
        if database_url:
            environment["STYLEQ_DATABASE_URL"] = database_url
            environment["STYLEQ_BROKER_URL"] = servers[1].url
        database = database_url or f"sqlite:///{root / 'data' / 'styleq.db'}"
        (root / "data").mkdir()
        upgrade_database(database)
        logs = root / "logs"
        logs.mkdir()
        processes: list[Process] = []
        workers: list[Process] = []
        try:
            api, url = start_api(environment, logs)
            processes.append(api)
            for index in (1, 2):
                # Names of their own (a worker on this host named like a live one would get a suffix).
                workers.append(start_worker(environment, logs, f"{request.param[0]}w{index}"))
                processes.append(workers[-1])
            yield Service(
                request.param,
                environment,
                database,
                url,
                api,
                workers,
                logs,
                Client(url, make_key(database, "alice")),
                Client(url, make_key(database, "bob")),
                Client(url, make_key(database, "ops", admin=True)),
                *(servers or (None, None)),
            )
        finally:
            for process in {*processes, *workers}:
                process.stop()


def _servers(backend: str):
    # Servers of the deployment's own: its fault tests stop them, which must not cut off the tests beside them.
    return private_servers() if backend == "postgres+redis" else nullcontext(None)


def _database(servers):
    return fresh_postgres_database(servers[0].admin_url) if servers else nullcontext(None)
