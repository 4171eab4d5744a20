"""The fault drills of the servers and the disk: the broker wiped or down, Postgres down, the disk full; deletes and cancels during checkpoints (tests/integration/drills.py has the deployment and clocks)."""

from __future__ import annotations

import time

import pytest
import redis as redis_client

from tests.integration.drills import FINAL, SMALL, fill, keep_both_workers_busy, whole

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_jobs_whose_messages_the_broker_lost_run_within_about_a_minute(drill, images_dir, record):
    # Two jobs keep both workers busy past the wipe, and end before the lost message is due again: under the fast
    # clocks (20 s) 60 iterations, as 120 outlasted it on a loaded 2-core CPU without AVX-512 (42.5 s from the wipe).
    busy = keep_both_workers_busy(drill, images_dir, drill.iterations(600, 60))
    waiting = drill.submit(images_dir, {"size": SMALL, "iterations": 20})

    # Redis loses everything (a restart of a Redis that keeps nothing on disk), the waiting job's message included.
    redis_client.Redis.from_url(drill.redis.url).flushdb()
    wiped = time.monotonic()
    assert drill.client.job(waiting)["status"] == "queued", "a worker took the job before its message was lost"
    for job_id in busy:
        assert drill.wait_final(job_id)["status"] == "succeeded"
    idle = time.monotonic()
    done = drill.client.wait_for(waiting, lambda j: j["status"] in FINAL, timeout=150)
    record(drill.fault("broker wiped: a queued job's lost message (from the wipe)"), time.monotonic() - wiped, drill.clocks.lost_message)
    record(drill.fault("broker wiped: ... of which with both workers idle"), time.monotonic() - idle, drill.clocks.lost_message)
    assert (done["status"], done["attempts"]) == ("succeeded", 1)


def test_a_job_accepted_while_redis_is_down_runs_soon_after_it_is_back(drill, images_dir, record):
    drill.redis.stop()
    try:
        job_id = drill.submit(images_dir, {"size": SMALL, "iterations": 20})
    finally:
        drill.redis.start()
    back = time.monotonic()
    done = drill.client.wait_for(job_id, lambda j: j["status"] in FINAL, timeout=120)
    record(drill.fault("Redis down at submit: job runs after Redis is back"), time.monotonic() - back, drill.clocks.back)
    assert (done["status"], done["attempts"]) == ("succeeded", 1)


def test_a_long_database_outage_keeps_the_job_and_the_api_answers_503(drill, images_dir, record):
    # Stopped at iteration 100 or later, resumed from a save at 90 or later: under the fast clocks, 150 or more to go.
    iterations = drill.iterations(1500, 250)
    job_id = drill.submit(images_dir, {"size": SMALL, "iterations": iterations})
    drill.client.wait_for(job_id, lambda j: j["status"] == "running" and j["iteration"] >= 100)

    drill.postgres.stop()
    try:
        outage = time.monotonic()
        answers = []
        while time.monotonic() - outage < drill.clocks.outage:  # longer than a worker's whole retry window
            answers.append(drill.client.get(f"/v1/jobs/{job_id}"))
            time.sleep(drill.clocks.outage / 10)
    finally:
        drill.postgres.start()
    back = time.monotonic()

    assert {response.status_code for response in answers} == {503}
    assert all(
        int(response.headers["Retry-After"]) > 0 and response.json()["error"]["code"] == "database_unavailable" for response in answers
    )
    resumed = drill.client.wait_for(job_id, lambda j: j["status"] == "running" and j["attempts"] == 2, timeout=90)
    record(
        drill.fault(f"Postgres down {drill.clocks.outage:.0f} s: job running again after it is back"),
        time.monotonic() - back,
        drill.clocks.back,
    )
    assert resumed["error"] is None
    done = drill.wait_final(job_id)
    assert (done["status"], done["attempts"]) == ("succeeded", 2)
    assert drill.history(job_id) == whole(iterations)
    assert "to be resumed when it is back" in "".join(w.output() for w in drill.workers)


def test_a_full_disk_costs_previews_not_the_job_and_a_result_waits_for_space(drill, images_dir):
    if not drill.mounted:
        pytest.skip("needs to mount a small tmpfs (root in a container that allows mount) to fill the storage")
    iterations = drill.iterations(600, 240)
    job_id = drill.submit(images_dir, {"size": SMALL, "iterations": iterations})
    drill.client.wait_for(job_id, lambda j: j["status"] == "running" and j["iteration"] >= 20)
    worker, _ = drill.holder(drill.client.job(job_id))

    filler = fill(drill.storage)
    try:
        deadline = time.monotonic() + 120
        while f"could not write the result of job {job_id}" not in worker.output():
            assert time.monotonic() < deadline, "the result was never tried"
            time.sleep(0.2)
    finally:
        filler.unlink()  # space again, while the worker retries (for 15 s, or 7.5 under the fast clocks)

    done = drill.wait_final(job_id)
    assert (done["status"], done["attempts"]) == ("succeeded", 1)
    assert drill.history(job_id) == whole(iterations)
    assert "No space left on device" in worker.output()
    assert drill.client.get(f"/v1/jobs/{job_id}/result").status_code == 200


def test_a_disk_that_stays_full_fails_the_job_plainly_after_its_attempts(drill, images_dir):
    if not drill.mounted:
        pytest.skip("needs to mount a small tmpfs (root in a container that allows mount) to fill the storage")
    job_id = drill.submit(images_dir, {"size": SMALL, "iterations": drill.iterations(300, 120)})
    drill.client.wait_for(job_id, lambda j: j["status"] == "running" and j["iteration"] >= 10)
    filler = fill(drill.storage)
    try:
        done = drill.wait_final(job_id, timeout=240)
    finally:
        filler.unlink()

    assert (done["status"], done["error"]["code"], done["attempts"]) == ("failed", "storage_error", 3)
    # The user reads what happened in plain words; the paths and the errno are in the workers' logs.
    assert str(drill.storage) not in done["error"]["message"] and "Errno" not in done["error"]["message"]
    assert drill.states(job_id) == []


def test_deletes_during_checkpoints_leave_no_files(drill, images_dir):
    deleted = []
    for delay in (0.0, 0.4, 0.9, 1.3, 1.8, 2.2):  # spread over the 2 s between saved states
        job_id = drill.submit(images_dir, {"size": SMALL, "iterations": 1500})
        drill.client.wait_for(job_id, lambda j: j["status"] == "running" and j["iteration"] >= 20)
        time.sleep(delay)
        assert drill.client.delete(f"/v1/jobs/{job_id}").status_code == 204
        deleted.append(job_id)
    time.sleep(5)  # time for any late write to land

    assert [job_id for job_id in deleted if (drill.storage / "jobs" / job_id[:2] / job_id).exists()] == []


def test_a_canceled_running_job_keeps_no_saved_state(drill, images_dir):
    job_id = drill.submit(images_dir, {"size": SMALL, "iterations": 1500})
    drill.client.wait_for(job_id, lambda j: j["status"] == "running" and j["iteration"] >= 100)
    assert drill.states(job_id)

    assert drill.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    assert drill.client.wait_for(job_id, lambda j: j["status"] in FINAL, timeout=30)["status"] == "canceled"
    assert drill.states(job_id) == []
