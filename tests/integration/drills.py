"""The fault drills' deployment, clocks and helpers: each fault docs/SERVICE.md's table lists, on Postgres + Redis with two real workers.

The drills are in two modules, each with a deployment of its own so the two run side by side under xdist:
test_fault_drills_workers.py (workers killed, stopped, frozen) and test_fault_drills_servers.py (the broker,
Postgres and the disk failing; deletes and cancels during checkpoints). tests/integration/conftest.py gives
them the `drill` and `record` fixtures defined here.

Every drill runs under two clocks (the timing settings, given to the API and worker processes as
STYLEQ_* variables): shortened ones in `make test` (5 s leases, a sweep every 2 s, lost messages re-sent
after 20 s, database retries for 7.5 s and a 20 s outage), and the defaults in `make test-full` (30 s
leases, a sweep every 15 s, lost messages re-sent after 60 s, database retries for about a minute and a
100 s outage), which give docs/SERVICE.md's fault table. Either way the drills kill real processes and stop the
real Postgres and Redis; only the clocks, and the jobs that must outlast them, are shorter.

Each drill asserts the promise (nothing lost, nothing run twice, resumed from the last save, within the
time the table states, worked out from the clocks) and records the time it measured in its test report;
tests/conftest.py prints the times at the end of the run (tests/integration/test_fault_drill_report.py
checks that it does).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from styleq.shared.adapters.migrate import upgrade_database
from styleq.shared.adapters.settings import Settings
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

PICTURES = ("rainier.jpg", "autumn-oak.jpg")
SMALL = [32, 48]
# A size whose first ten iterations take seconds here: a worker can be killed before it saves anything.
SLOW = [256, 384]
FINAL = ("succeeded", "failed", "canceled")
# Workers named for this machine, as `styleq worker` names them: a dead one's leases are known dead at once.
HOST = socket.gethostname()


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class Clocks:
    """The timing settings a drill runs under, and what the table's promises come to under them."""

    name: str
    lease: float
    sweep: float
    requeue: float
    database_retry_delays: tuple[float, ...]
    result_write_retry_delays: tuple[float, ...]
    # How long Postgres stays down: longer than a lease and than a worker's whole retry window, so the
    # worker gives up the run and the job is resumed by the sweep.
    outage: float

    def __post_init__(self) -> None:
        assert self.outage > max(self.lease, sum(self.database_retry_delays)) + 5, (
            f"{self.name}: the outage must outlast the lease and the retries"
        )

    @property
    def environment(self) -> dict[str, str]:
        """Return the STYLEQ_* variables that set these clocks (none for the defaults)."""
        if self == DEFAULT:
            return {}
        return {
            "STYLEQ_LEASE_SECONDS": str(self.lease),
            "STYLEQ_SWEEP_EVERY_SECONDS": str(self.sweep),
            "STYLEQ_REQUEUE_AFTER_SECONDS": str(self.requeue),
            "STYLEQ_DATABASE_RETRY_DELAYS": ",".join(map(str, self.database_retry_delays)),
            "STYLEQ_RESULT_WRITE_RETRY_DELAYS": ",".join(map(str, self.result_write_retry_delays)),
        }

    # The promises, each the mechanism's worst case plus the time for processes to start, reconnect and claim;
    # under the defaults they are docs/SERVICE.md's numbers.
    @property
    def takeover(self) -> float:
        """A lost worker's job running elsewhere: a lease gone stale, a sweep, 15 s (60 s by default)."""
        return self.lease + self.sweep + 15

    @property
    def respawn(self) -> float:
        """A killed pool process's job running again: as `takeover`, but never under 30 s, as it waits for the new
        pool process to load torch and the weights, whatever the clocks (14 s on the loaded 2-core machine)."""
        return max(self.takeover, 30)

    @property
    def lost_message(self) -> float:
        """A queued job whose message was lost running: re-sent after `requeue`, at a sweep, 15 s (90 s by default)."""
        return self.requeue + self.sweep + 15

    @property
    def back(self) -> float:
        """A job running again after its server is back: the next sweep, 30 s for workers to reconnect (45 s by default)."""
        return self.sweep + 30


DEFAULT = Clocks(
    "default",
    _default("lease_seconds"),
    _default("sweep_every_seconds"),
    _default("requeue_after_seconds"),
    _default("database_retry_delays"),
    _default("result_write_retry_delays"),
    outage=100,
)
# Short enough that the drills take minutes, long enough that a loaded 2-core machine keeps the leases of
# live workers (heartbeats every 1.25 s) and that two busy jobs outlast the wipe of the broker.
FAST = Clocks(
    "fast", lease=5, sweep=2, requeue=20, database_retry_delays=(0.5, 1, 2, 4), result_write_retry_delays=(0.5, 1, 2, 4), outage=20
)


def submit_pair(client: Client, images_dir: Path, params: dict[str, Any]) -> str:
    """Submit the drills' photo and style with `params`; return the accepted job's id."""
    response = client.submit(images_dir / PICTURES[0], images_dir / PICTURES[1], params)
    assert response.status_code == 202, response.text
    return response.json()["id"]


@dataclass
class Drill:
    clocks: Clocks
    environment: dict[str, str]
    storage: Path
    logs: Path
    api: Process
    workers: list[Process]
    client: Client
    mounted: bool
    # Servers of the drills' own, so stopping them cuts off no test running beside them.
    postgres: PrivatePostgres
    redis: PrivateRedis

    def submit(self, images_dir: Path, params: dict[str, Any]) -> str:
        return submit_pair(self.client, images_dir, params)

    def holder(self, job: dict[str, Any]) -> tuple[Process, int]:
        """Return the worker running `job` and the pid of its pool process (the lease owner is `name@host/pid`)."""
        node, _, pid = job["worker"].rpartition("/")
        return next(worker for worker in self.workers if node == f"{worker.name}@{HOST}"), int(pid)

    def restart(self, worker: Process) -> None:
        worker.stop()
        self.workers[self.workers.index(worker)] = start_worker(self.environment, self.logs, worker.name, HOST)

    def history(self, job_id: str) -> list[int]:
        return [c["iteration"] for c in self.client.get(f"/v1/jobs/{job_id}/checkpoints?limit=1000").json()["checkpoints"]]

    def states(self, job_id: str) -> list[str]:
        folder = self.storage / "jobs" / job_id[:2] / job_id
        return sorted(path.name for path in folder.glob("state*")) if folder.exists() else []

    def wait_final(self, job_id: str, timeout: float = 240) -> dict[str, Any]:
        return self.client.wait_for(job_id, lambda j: j["status"] in FINAL, timeout=timeout)

    def iterations(self, default: int, fast: int) -> int:
        """Return a job's length: jobs outlast the clocks they are drilled under, so shorter clocks, shorter jobs."""
        return default if self.clocks == DEFAULT else fast

    def fault(self, fault: str) -> str:
        """Return the fault's line in the printed summary, naming the clocks it was drilled under."""
        return f"[{self.clocks.name} clocks] {fault}"


@pytest.fixture
def record(record_property) -> Callable[[str, float, float], None]:
    """Return a function that puts a measured recovery time in the drill's test report, then asserts its promise."""

    def measured(fault: str, seconds: float, promise: float) -> None:
        # Into the report at once, from the test's body: the report carries it to the run's summary (from an
        # xdist worker too), kept or broken. A fixture adding it at teardown came after the summary was printed.
        record_property("drill_time", (fault, seconds, promise))
        assert seconds <= promise, f"{fault}: {seconds:.1f} s, promised {promise:.0f} s"

    return measured


def whole(iterations: int) -> list[int]:
    return list(range(10, iterations + 1, 10))


@pytest.fixture(scope="module", params=[pytest.param(FAST, id="fast"), pytest.param(DEFAULT, id="default", marks=pytest.mark.full)])
def drill(request, tmp_path_factory, caffe_weights, models_dir) -> Iterator[Drill]:
    clocks: Clocks = request.param
    root = tmp_path_factory.mktemp(f"drills-{clocks.name}")
    storage = root / "storage"
    storage.mkdir()
    # The storage on a small filesystem of its own, so a drill can fill it (root ignores permissions, not a full disk).
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(storage)], capture_output=True).returncode == 0
    environment = {
        **os.environ,
        "STYLEQ_DATA_DIR": str(root / "data"),
        "STYLEQ_STORAGE_DIR": str(storage),
        "STYLEQ_MODEL_DIR": str(models_dir),
        "STYLEQ_QUEUE": f"styleq-drill-{uuid.uuid4().hex[:8]}",
        "OMP_NUM_THREADS": "1",
    }
    for name in list(environment):
        # Every setting at its default but those of the clocks: the default clocks measure what an operator gets.
        if name.startswith("STYLEQ_") and name not in ("STYLEQ_DATA_DIR", "STYLEQ_STORAGE_DIR", "STYLEQ_MODEL_DIR", "STYLEQ_QUEUE"):
            del environment[name]
    environment.update(clocks.environment)
    # Fair use off, not a timing: the drills poll ten times a second with one non-admin key.
    environment.update(STYLEQ_MAX_REQUESTS_PER_MINUTE="0", STYLEQ_MAX_ACTIVE_JOBS="0")
    (root / "data").mkdir()
    logs = root / "logs"
    logs.mkdir()
    processes: list[Process] = []
    with private_servers() as (postgres, redis), fresh_postgres_database(postgres.admin_url) as database_url:
        environment["STYLEQ_DATABASE_URL"] = database_url
        environment["STYLEQ_BROKER_URL"] = redis.url
        upgrade_database(database_url)
        drill = None
        try:
            api, url = start_api(environment, logs)
            processes.append(api)
            workers = [start_worker(environment, logs, name, HOST) for name in ("d1", "d2")]
            drill = Drill(
                clocks, environment, storage, logs, api, workers, Client(url, make_key(database_url, "alice")), mounted, postgres, redis
            )
            yield drill
        finally:
            postgres.start()
            redis.start()
            for process in {*processes, *(drill.workers if drill else [])}:
                process.stop()
            if mounted:
                subprocess.run(["umount", "-l", str(storage)], capture_output=True)


def keep_both_workers_busy(drill: Drill, images_dir: Path, iterations: int, timeout: float = 180) -> list[str]:
    """Submit jobs until two run at once, each with at least half its iterations ahead; return every job submitted.

    A worker whose pool process is new (the drill before restarts one) first loads torch and the weights, so the
    other worker's job may end before the second starts; a free worker would then take the next job at once.
    """
    submitted: list[str] = []
    running: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        jobs = {job_id: drill.client.job(job_id) for job_id in submitted}
        running = [job_id for job_id, job in jobs.items() if job["status"] == "running" and job["iteration"] < iterations // 2]
        if len(running) == 2:
            return submitted
        unfinished = [job_id for job_id, job in jobs.items() if job["status"] not in FINAL]
        if len(unfinished) < 2:
            submitted.append(drill.submit(images_dir, {"size": SMALL, "iterations": iterations}))
        if time.monotonic() > deadline:
            pytest.fail(f"two jobs never ran at once: {jobs}")
        time.sleep(0.1)


def fill(storage: Path) -> Path:
    """Fill the storage's filesystem to the last byte; return the file that does it."""
    filler = storage / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (1 << 20, 4096, 1):
            try:
                while os.write(descriptor, b"\0" * chunk):
                    pass
            except OSError:
                pass
    finally:
        os.close(descriptor)
    return filler
