"""Monitoring a real deployment (Postgres + Redis, gunicorn with three processes, two workers): `/metrics`,
each worker's metrics port, and Flower, all after a few tiny jobs."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from styleq.shared.adapters.db import make_engine, make_session_factory, session_scope
from styleq.shared.adapters.migrate import upgrade_database
from styleq.shared.adapters.models import Job
from styleq.shared.service.stats import DURATION_BUCKETS
from tests.services import REDIS_URL, Client, Process, ensure_redis, free_port, fresh_postgres_database, make_key, start_api, start_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TINY_JOB = {"size": [32, 48], "iterations": 20}
# A Redis database of their own, so Flower sees these workers' events and no other test's.
BROKER = f"{REDIS_URL}/12"
API_PROCESSES = 3


@dataclass
class Deployment:
    url: str
    client: Client
    database_url: str
    api_pid: int
    worker_ports: dict[str, int]
    flower_url: str
    job_ids: list[str]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, caffe_weights, models_dir, images_dir) -> Iterator[Deployment]:
    """Start Flower, the API and two workers (each serving its metrics), and run four jobs to their end plus one canceled."""
    root = tmp_path_factory.mktemp("monitoring")
    environment = {
        **os.environ,
        "STYLEQ_DATA_DIR": str(root / "data"),
        "STYLEQ_MODEL_DIR": str(models_dir),
        "STYLEQ_BROKER_URL": BROKER,
        "STYLEQ_QUEUE": f"styleq-test-{uuid.uuid4().hex[:8]}",
        "STYLEQ_SWEEP_EVERY_SECONDS": "1",
        "STYLEQ_MAX_REQUESTS_PER_MINUTE": "0",
        "STYLEQ_MAX_ACTIVE_JOBS": "0",
        "OMP_NUM_THREADS": "1",
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn_config makes the API's folder, as in production
    ensure_redis()
    logs = root / "logs"
    logs.mkdir()
    (root / "data").mkdir()
    processes: list[Process] = []
    with fresh_postgres_database() as database_url:
        upgrade_database(database_url)
        environment["STYLEQ_DATABASE_URL"] = database_url
        try:
            flower_port = free_port()
            flower = Process(
                "flower",
                [sys.executable, "-m", "celery", "--broker", BROKER, "flower", f"--port={flower_port}", "--address=127.0.0.1"],
                {**environment, "FLOWER_UNAUTHENTICATED_API": "true"},
                logs,
            )
            processes.append(flower)
            api, url = start_api(environment, logs, processes=API_PROCESSES)
            processes.append(api)
            worker_ports = {}
            for name in ("mw1", "mw2"):
                port = free_port()
                processes.append(start_worker({**environment, "STYLEQ_METRICS_PORT": str(port)}, logs, name))
                worker_ports[f"{name}@test"] = port
            flower_url = f"http://127.0.0.1:{flower_port}"
            wait_until(lambda: requests.get(f"{flower_url}/healthcheck", timeout=2).ok, "Flower answers", flower)

            client = Client(url, make_key(database_url, "monitor"))
            job_ids = [
                client.submit(images_dir / "tubingen.jpg", images_dir / "starry_night.jpg", {**TINY_JOB, "seed": seed}).json()["id"]
                for seed in range(4)
            ]
            long_job = client.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {**TINY_JOB, "iterations": 2000}).json()[
                "id"
            ]
            client.wait_for(long_job, lambda job: job["status"] == "running" and job["iteration"] >= 10)
            assert client.post(f"/v1/jobs/{long_job}/cancel").status_code == 202
            for job_id in [*job_ids, long_job]:
                client.wait_for(job_id, lambda job: job["status"] in ("succeeded", "failed", "canceled"))
            yield Deployment(url, client, database_url, api.popen.pid, worker_ports, flower_url, [*job_ids, long_job])
        finally:
            for process in processes:  # all told at once: each takes a few seconds to stop
                if process.alive():
                    process.popen.terminate()
            for process in processes:
                process.stop()


def wait_until(condition, what: str, process: Process | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"never true: {what}" + (f"\n{process.output()[-3000:]}" if process else ""))
        time.sleep(0.3)


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Fetch a metrics page and parse it with prometheus_client's own parser: {(sample name, labels): value}."""
    response = requests.get(url, timeout=30)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_match_the_database_after_the_jobs(deployment):
    engine = make_engine(deployment.database_url)
    with session_scope(make_session_factory(engine)) as session:
        jobs = session.scalars(select(Job)).all()
    engine.dispose()

    samples = scrape(f"{deployment.url}/metrics")

    assert sorted(job.status.value for job in jobs) == ["canceled", "succeeded", "succeeded", "succeeded", "succeeded"]
    for status in ("queued", "running", "succeeded", "failed", "canceled"):
        assert value(samples, "styleq_jobs", status=status) == sum(job.status == status for job in jobs), status
    assert value(samples, "styleq_queue_depth") == 0 and value(samples, "styleq_queue_oldest_job_age_seconds") == 0
    waits = [(job.started_at - job.created_at).total_seconds() for job in jobs]
    assert value(samples, "styleq_job_queue_wait_seconds_count") == len(waits)
    assert value(samples, "styleq_job_queue_wait_seconds_sum") == pytest.approx(sum(waits), abs=1e-3)
    for bound in DURATION_BUCKETS:
        assert value(samples, "styleq_job_queue_wait_seconds_bucket", le=repr(bound)) == sum(wait <= bound for wait in waits), bound
    for status in ("succeeded", "canceled"):
        runs = [(job.finished_at - job.started_at).total_seconds() for job in jobs if job.status == status]
        assert value(samples, "styleq_job_run_seconds_count", status=status) == len(runs)
        assert value(samples, "styleq_job_run_seconds_sum", status=status) == pytest.approx(sum(runs), abs=1e-3)
        for bound in DURATION_BUCKETS:
            assert value(samples, "styleq_job_run_seconds_bucket", status=status, le=repr(bound)) == sum(run <= bound for run in runs)
    assert value(samples, "styleq_storage_bytes", kind="uploads") > 0 and value(samples, "styleq_storage_bytes", kind="results") > 0


def test_every_api_process_s_requests_are_counted_whichever_answers(deployment):
    def healthz_count() -> float:
        return value(
            scrape(f"{deployment.url}/metrics"), "styleq_http_requests_total", method="GET", endpoint="health.healthz", status="200"
        )

    before = healthz_count()
    for _ in range(30):
        requests.get(f"{deployment.url}/healthz", timeout=10)  # a new connection each: the processes share them out

    counts = {healthz_count() for _ in range(6)}  # answered by whichever processes accept

    assert counts == {before + 30}
    # gunicorn_config made the folder (PROMETHEUS_MULTIPROC_DIR is not set here); its files are named by process.
    writers = {int(path.stem.rpartition("_")[2]) for path in Path(tempfile.gettempdir()).glob("styleq-api-metrics-*/counter_*.db")}
    ours = {pid for pid in writers if parent_of(pid) == deployment.api_pid}
    assert len(ours) >= 2, f"only {ours} of gunicorn's processes counted requests: the test did not reach several"


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_each_worker_serves_its_iterations_memory_and_checkpoint_writes(deployment):
    engine = make_engine(deployment.database_url)
    with session_scope(make_session_factory(engine)) as session:
        jobs = session.scalars(select(Job)).all()
    engine.dispose()

    ran = 0
    for worker, port in deployment.worker_ports.items():
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        own = [job for job in jobs if (job.lease_owner or "").startswith(worker + "/")]
        # Every checkpoint a job reached is in its row, and each one's iterations were counted once, by the worker that ran it.
        assert value(samples, "styleq_worker_iterations_total", worker=worker, device="cpu") == sum(job.iteration for job in own), worker
        writes = sum(value(samples, "styleq_checkpoint_write_seconds_count", worker=worker, with_state=flag) for flag in ("true", "false"))
        # At least each job's first checkpoint (with a state) and, unless it was canceled there, its last.
        assert writes >= sum(2 if job.status == "succeeded" else 1 for job in own), worker
        if own:
            assert value(samples, "styleq_worker_device_memory_bytes", worker=worker, device="cpu", kind="rss") > 50_000_000
        ran += len(own)
    assert ran == len(jobs)


def test_flower_lists_both_workers_and_every_run_job_task_with_its_state(deployment):
    workers: dict = {}

    def both_workers_listed() -> bool:
        workers.update(requests.get(f"{deployment.flower_url}/api/workers", params={"refresh": "1"}, timeout=20).json())
        return set(deployment.worker_ports) <= set(workers)

    tasks: dict = {}

    def every_job_s_task_succeeded() -> bool:
        tasks.clear()
        tasks.update(requests.get(f"{deployment.flower_url}/api/tasks", timeout=20).json())
        done = {task["args"] for task in tasks.values() if task["name"] == "styleq.run_job" and task["state"] == "SUCCESS"}
        return all(any(job_id in args for args in done) for job_id in deployment.job_ids)

    wait_until(both_workers_listed, "Flower lists both workers")
    wait_until(every_job_s_task_succeeded, "Flower shows every run_job task succeeded")

    run_jobs = [task for task in tasks.values() if task["name"] == "styleq.run_job"]
    assert {task["worker"] for task in run_jobs} <= set(deployment.worker_ports)
    assert all(task["received"] and task["started"] for task in run_jobs if task["state"] == "SUCCESS")
