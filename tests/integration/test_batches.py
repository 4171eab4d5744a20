"""Jobs submitted together run as one batch on a worker allowed batches, and a batch outlives its worker, on both backends."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.services import Process, start_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PAIRS = [("rainier.jpg", "autumn-oak.jpg"), ("tubingen.jpg", "starry_night.jpg"), ("shipwreck.jpg", "the_scream.jpg")]
FINISHED = {"succeeded", "failed", "canceled"}


@pytest.fixture(scope="module")
def only_batch_workers(service):
    """Stop the service's own workers (one job at a time on a CPU) for this module, so that jobs wait for a batch worker."""
    for worker in service.workers:
        worker.stop()
    try:
        yield service
    finally:
        service.workers[:] = [start_worker(service.environment, service.log_dir, worker.name) for worker in service.workers]


def start_batch_worker(service, name: str) -> Process:
    """Start a worker that optimises up to four jobs at once, as a GPU worker does by default."""
    return start_worker({**service.environment, "STYLEQ_BATCH_SIZE": "4"}, service.log_dir, name)


def submit_together(service, images_dir, params) -> list[str]:
    """Submit one job per pair of pictures, each with its own seed; return their ids."""
    ids = []
    for seed, (content, style) in enumerate(PAIRS):
        response = service.alice.submit(images_dir / content, images_dir / style, {**params, "seed": seed})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def history(service, job_id) -> list[int]:
    return [c["iteration"] for c in service.alice.get(f"/v1/jobs/{job_id}/checkpoints").json()["checkpoints"]]


def test_jobs_submitted_together_run_as_one_batch_each_with_its_whole_history(only_batch_workers, images_dir):
    service = only_batch_workers
    ids = submit_together(service, images_dir, {"size": [32, 48], "iterations": 40})
    assert [service.alice.job(job_id)["status"] for job_id in ids] == ["queued"] * 3

    worker = start_batch_worker(service, "batch1")
    try:
        done = [service.alice.wait_for(job_id, lambda j: j["status"] in FINISHED, timeout=240) for job_id in ids]
    finally:
        worker.stop()

    assert [(job["status"], job["batch_size"], job["attempts"]) for job in done] == [("succeeded", 3, 1)] * 3
    assert done[0]["batch_id"] and {job["batch_id"] for job in done} == {done[0]["batch_id"]}
    assert {job["worker"].split("/")[0] for job in done} == {"batch1@test"}
    for job_id in ids:
        assert history(service, job_id) == [10, 20, 30, 40]
        result = service.alice.get(f"/v1/jobs/{job_id}/result")
        assert result.status_code == 200 and Image.open(io.BytesIO(result.content)).size == (48, 32)


def test_every_job_of_a_killed_workers_batch_resumes_and_finishes_once(only_batch_workers, images_dir):
    service = only_batch_workers
    ids = submit_together(service, images_dir, {"size": [32, 48], "iterations": 80})
    victim = start_batch_worker(service, "batch2")
    # PREVIEW_EVERY is 2 here, so by iteration 40 each job has saved its own state at iteration 20 or later.
    running = [service.alice.wait_for(job_id, lambda j: j["status"] == "running" and j["iteration"] >= 40, timeout=240) for job_id in ids]
    assert [job["batch_size"] for job in running] == [3] * 3 and max(job["iteration"] for job in running) < 80

    victim.kill()
    victim.stop()  # closes its log
    rescuer = start_batch_worker(service, "batch3")
    try:
        done = [service.alice.wait_for(job_id, lambda j: j["status"] in FINISHED, timeout=240) for job_id in ids]
    finally:
        rescuer.stop()

    assert [(job["status"], job["attempts"]) for job in done] == [("succeeded", 2)] * 3
    assert {job["worker"].split("/")[0] for job in done} == {"batch3@test"}
    log = rescuer.log_path.read_text()
    for job_id in ids:
        # Resumed, not restarted: from its own saved state, and the history is whole, once each.
        assert f"resuming job {job_id} at iteration" in log
        assert history(service, job_id) == list(range(10, 81, 10))
