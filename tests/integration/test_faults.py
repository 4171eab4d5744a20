"""No job is lost when a worker, Redis or Postgres dies."""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests.services import start_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_job_of_a_killed_worker_resumes_elsewhere_from_its_saved_state(service, images_dir):
    # Killed at iteration 40 or later, then 120 iterations or more to go: the resumed run is seen running.
    params = {"size": [32, 48], "iterations": 160}
    job = service.alice.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", params).json()
    # PREVIEW_EVERY is 2 here, so by iteration 40 a state has been saved at iteration 20 or later.
    running = service.alice.wait_for(job["id"], lambda j: j["status"] == "running" and j["iteration"] >= 40)
    node = running["worker"].split("/")[0]
    victim = next(worker for worker in service.workers if node.startswith(f"{worker.name}@"))

    victim.kill()
    try:
        resumed = service.alice.wait_for(job["id"], lambda j: j["attempts"] == 2 and j["status"] == "running", timeout=120)
        done = service.alice.wait_for(job["id"], lambda j: j["status"] in ("succeeded", "failed", "canceled"), timeout=180)
    finally:
        victim.stop()  # closes its log: once replaced, nothing else holds it
        service.workers[service.workers.index(victim)] = start_worker(service.environment, service.log_dir, victim.name)

    assert resumed["worker"].split("/")[0] != node
    assert done["status"] == "succeeded" and done["attempts"] == 2
    history = [c["iteration"] for c in service.alice.get(f"/v1/jobs/{job['id']}/checkpoints").json()["checkpoints"]]
    # Resumed, not restarted: the history is whole, once each, with no second start from iteration 10.
    assert history == list(range(10, 161, 10))


def test_a_coarse_to_fine_job_killed_at_its_middle_scale_resumes_there(service, images_dir):
    schedule = {"scales": [0.5, 0.75, 1], "scale_iterations": [40, 160, 40]}
    job = service.alice.submit(
        images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {"size": [64, 96], "iterations": 240, **schedule}
    ).json()
    # Iterations 41 to 200 run at three quarters of the size; by 80 a state has been saved there (every 20 iterations).
    running = service.alice.wait_for(job["id"], lambda j: j["status"] == "running" and j["iteration"] >= 80)
    node = running["worker"].split("/")[0]
    victim = next(worker for worker in service.workers if node.startswith(f"{worker.name}@"))

    victim.kill()
    try:
        resumed = service.alice.wait_for(job["id"], lambda j: j["attempts"] == 2 and j["status"] == "running", timeout=120)
        done = service.alice.wait_for(job["id"], lambda j: j["status"] in ("succeeded", "failed", "canceled"), timeout=180)
    finally:
        victim.stop()
        service.workers[service.workers.index(victim)] = start_worker(service.environment, service.log_dir, victim.name)

    assert running["iteration"] < 200, "the drill was too slow to kill the worker at the middle scale"
    # At the middle scale: where the state the killed worker wrote last was (possibly after `running` was seen).
    assert 40 < resumed["resumed_from"] <= 200 and done["status"] == "succeeded"
    checkpoints = service.alice.get(f"/v1/jobs/{job['id']}/checkpoints?limit=1000").json()["checkpoints"]
    # The history spans the three scales, once each, with no second start at the coarse one.
    assert [(c["iteration"], c["scale"]) for c in checkpoints] == [
        (i, 0.5 if i <= 40 else 0.75 if i <= 200 else 1.0) for i in range(10, 241, 10)
    ]


def test_a_job_handed_back_by_sigterm_says_it_resumed_where_its_worker_stopped(service, images_dir):
    job = service.alice.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {"size": [32, 48], "iterations": 160}).json()
    running = service.alice.wait_for(job["id"], lambda j: j["status"] == "running" and j["iteration"] >= 40)
    node = running["worker"].split("/")[0]
    victim = next(worker for worker in service.workers if node.startswith(f"{worker.name}@"))

    # As a deploy stops a worker: it saves the job's state at its next checkpoint and hands the job back.
    victim.popen.send_signal(signal.SIGTERM)
    try:
        resumed = service.alice.wait_for(job["id"], lambda j: j["attempts"] == 2 and j["status"] == "running", timeout=60)
        assert victim.popen.wait(timeout=30) == 0
        handed_back = re.search(rf"job {job['id']} handed back to the queue at iteration (\d+)", victim.output())
    finally:
        victim.stop()
        service.workers[service.workers.index(victim)] = start_worker(service.environment, service.log_dir, victim.name)

    assert handed_back is not None, victim.output()
    stopped_at = int(handed_back.group(1))
    # Where the stopping worker saved and the next one resumed, not the last periodic save before it.
    assert resumed["resumed_from"] == stopped_at >= running["iteration"]
    done = service.alice.wait_for(job["id"], lambda j: j["status"] in ("succeeded", "failed", "canceled"), timeout=180)
    assert (done["status"], done["attempts"], done["resumed_from"]) == ("succeeded", 2, stopped_at)
    history = [c["iteration"] for c in service.alice.get(f"/v1/jobs/{job['id']}/checkpoints").json()["checkpoints"]]
    assert history == list(range(10, 161, 10))


def test_a_job_submitted_while_redis_is_down_runs_once_it_is_back(service, images_dir):
    if service.backend != "postgres+redis":
        pytest.skip("the embedded broker is a file, not a server that can die")
    service.redis.stop()
    try:
        response = service.alice.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {"size": [32, 48], "iterations": 20})
        assert response.status_code == 202, response.text
    finally:
        service.redis.start()

    # The message never reached Redis; the database still has the job, and a worker's sweeper sends it.
    done = service.alice.wait_for(response.json()["id"], lambda j: j["status"] == "succeeded", timeout=120)
    assert done["attempts"] == 1


def test_a_running_job_survives_a_postgres_restart(service, images_dir):
    if service.backend != "postgres+redis":
        pytest.skip("the embedded database is a file, not a server that can die")
    job = service.alice.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {"size": [32, 48], "iterations": 300}).json()
    # Mid-run when the database stops, whatever the machine: 280 iterations to go take seconds, the stop well under one.
    service.alice.wait_for(job["id"], lambda j: j["status"] == "running" and j["iteration"] >= 20)

    service.postgres.stop()
    time.sleep(3)
    service.postgres.start()

    done = service.alice.wait_for(job["id"], lambda j: j["status"] in ("succeeded", "failed", "canceled"), timeout=180)
    assert done["status"] == "succeeded" and done["attempts"] == 1
    history = [c["iteration"] for c in service.alice.get(f"/v1/jobs/{job['id']}/checkpoints").json()["checkpoints"]]
    assert history == list(range(10, 301, 10))
