"""The fault drills of the workers: a pool process or a whole worker killed, stopped by a deploy, frozen (tests/integration/drills.py has the deployment and clocks)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.drills import SLOW, SMALL, whole

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_a_killed_pool_process_s_job_runs_again_elsewhere_within_a_minute_from_its_last_save(drill, images_dir, record):
    iterations = drill.iterations(1500, 300)
    job_id = drill.submit(images_dir, {"size": SMALL, "iterations": iterations})
    running = drill.client.wait_for(job_id, lambda j: j["status"] == "running" and j["iteration"] >= 100)
    _, pool_pid = drill.holder(running)

    os.kill(pool_pid, signal.SIGKILL)
    killed = time.monotonic()
    drill.client.wait_for(job_id, lambda j: j["status"] == "running" and j["attempts"] == 2, timeout=90)
    record(drill.fault("pool process killed (kill -9)"), time.monotonic() - killed, drill.clocks.respawn)

    done = drill.wait_final(job_id)
    assert (done["status"], done["attempts"]) == ("succeeded", 2)
    # Nothing lost, nothing twice: every checkpoint once, in order; the run went on from its saved state.
    assert drill.history(job_id) == whole(iterations)
    logs = "".join(w.output() for w in drill.workers)
    assert f"resuming job {job_id} at iteration" in logs and f"resuming job {job_id} at iteration 0" not in logs
    assert drill.states(job_id) == []


def test_a_whole_worker_killed_has_its_job_running_on_the_other_within_a_minute(drill, images_dir, record):
    iterations = drill.iterations(1500, 300)
    job_id = drill.submit(images_dir, {"size": SMALL, "iterations": iterations})
    running = drill.client.wait_for(job_id, lambda j: j["status"] == "running" and j["iteration"] >= 100)
    victim, _ = drill.holder(running)

    victim.kill()
    killed = time.monotonic()
    try:
        resumed = drill.client.wait_for(job_id, lambda j: j["status"] == "running" and j["attempts"] == 2, timeout=90)
        record(drill.fault("whole worker killed (kill -9 of the worker and its pool)"), time.monotonic() - killed, drill.clocks.takeover)
    finally:
        drill.restart(victim)

    assert drill.holder(resumed)[0] is not victim
    done = drill.wait_final(job_id)
    assert (done["status"], done["attempts"]) == ("succeeded", 2)
    assert drill.history(job_id) == whole(iterations)


def test_workers_killed_after_progress_never_use_up_the_attempts(drill, images_dir):
    iterations = drill.iterations(1200, 480)
    job_id = drill.submit(images_dir, {"size": SMALL, "iterations": iterations})
    for attempt, point in enumerate((170, 270, 320), start=1):
        # Killed at each point, after the attempt saved a state past where it resumed.
        running = drill.client.wait_for(
            job_id,
            lambda j, attempt=attempt, point=point: j["status"] == "running" and j["attempts"] == attempt and j["iteration"] >= point,
        )
        os.kill(drill.holder(running)[1], signal.SIGKILL)

    done = drill.wait_final(job_id)
    assert (done["status"], done["attempts"]) == ("succeeded", 4)
    assert drill.history(job_id) == whole(iterations)


def test_a_job_whose_worker_dies_before_saving_anything_three_times_in_a_row_is_stopped(drill, images_dir):
    job_id = drill.submit(images_dir, {"size": SLOW, "iterations": 500})
    for attempt in (1, 2, 3):
        running = drill.client.wait_for(
            job_id, lambda j, attempt=attempt: j["status"] == "running" and j["attempts"] == attempt, timeout=90
        )
        assert running["iteration"] == 0, "the drill was too slow to kill the worker before its first checkpoint"
        os.kill(drill.holder(running)[1], signal.SIGKILL)

    done = drill.wait_final(job_id, timeout=90)
    assert (done["status"], done["error"]["code"], done["attempts"]) == ("failed", "worker_lost", 3)
    assert drill.states(job_id) == []


def test_sigterm_hands_the_running_job_back_and_the_worker_exits_at_once(drill, images_dir, record):
    iterations = drill.iterations(1500, 300)
    job_id = drill.submit(images_dir, {"size": SMALL, "iterations": iterations})
    running = drill.client.wait_for(job_id, lambda j: j["status"] == "running" and j["iteration"] >= 100)
    victim, _ = drill.holder(running)

    victim.popen.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    try:
        resumed = drill.client.wait_for(job_id, lambda j: j["status"] == "running" and j["attempts"] == 2, timeout=60)
        # No clock in it: the job is handed back at its next checkpoint and sent again at once.
        record(drill.fault("worker stopped (SIGTERM, as a deploy does): job running elsewhere"), time.monotonic() - stopped, 10)
        assert victim.popen.wait(timeout=30) == 0
        record(drill.fault("worker stopped (SIGTERM): worker exited"), time.monotonic() - stopped, 15)
        assert f"job {job_id} handed back to the queue" in victim.output()
    finally:
        drill.restart(victim)

    assert drill.holder(resumed)[0] is not victim
    done = drill.wait_final(job_id)
    assert (done["status"], done["attempts"]) == ("succeeded", 2)
    assert drill.history(job_id) == whole(iterations)


def test_a_frozen_worker_that_wakes_up_after_a_takeover_writes_nothing(drill, images_dir, record):
    # Long enough that the new holder still runs after it got 200 iterations further and the woken process checked in.
    iterations = drill.iterations(3000, 700)
    job_id = drill.submit(images_dir, {"size": SMALL, "iterations": iterations})
    running = drill.client.wait_for(job_id, lambda j: j["status"] == "running" and j["iteration"] >= 100)
    frozen, pool_pid = drill.holder(running)

    os.kill(pool_pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        taken = drill.client.wait_for(job_id, lambda j: j["status"] == "running" and j["attempts"] == 2, timeout=120)
        record(drill.fault("worker frozen (SIGSTOP): job running elsewhere"), time.monotonic() - stopped, drill.clocks.takeover)
        # The new holder gets well past where the frozen one was and saves newer states.
        drill.client.wait_for(job_id, lambda j: j["iteration"] >= taken["iteration"] + 200, timeout=120)
    finally:
        os.kill(pool_pid, signal.SIGCONT)
    newest = max(int(name[6:15]) for name in drill.states(job_id))
    time.sleep(5)  # the woken process reaches its next checkpoint, finds the lease gone, and stops

    assert min(int(name[6:15]) for name in drill.states(job_id)) >= newest
    assert "'lost'" in frozen.output()  # the woken run's task ended as lost, having written nothing
    # The rest of a 3000-iteration job: 270 s at the default clocks on the loaded 2-core machine, past the usual 240.
    done = drill.wait_final(job_id, timeout=480)
    assert (done["status"], done["attempts"]) == ("succeeded", 2)
    assert drill.history(job_id) == whole(iterations)
    assert drill.states(job_id) == []
