"""No job is lost when a worker dies mid-run: another worker resumes it from its last saved state."""

from __future__ import annotations

import pytest

from tests.services import start_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_job_of_a_killed_worker_resumes_elsewhere_from_its_saved_state(service, images_dir):
    params = {"size": [32, 48], "iterations": 400}
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
        service.workers[service.workers.index(victim)] = start_worker(service.environment, service.log_dir, victim.name)

    assert resumed["worker"].split("/")[0] != node
    assert done["status"] == "succeeded" and done["attempts"] == 2
    history = [c["iteration"] for c in service.alice.get(f"/v1/jobs/{job['id']}/checkpoints").json()["checkpoints"]]
    # Resumed, not restarted: the history is whole, once each, with no second start from iteration 10.
    assert history == list(range(10, 401, 10))
