"""The workers' side of the service: one claim wins, a lease is its holder's alone, and the sweep recovers lost jobs."""

from __future__ import annotations

from datetime import timedelta

from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import Job, JobStatus, utcnow
from styleq.shared.service import jobs, leases
from tests.shared.conftest import add_job, load

CHECKPOINT = {"iteration": 10, "elapsed_s": 1.0, "content": 1.0, "style": 2.0, "tv": 0.5, "total": 3.5}


def test_of_two_workers_claiming_a_queued_job_only_the_first_gets_it(factory, owners):
    job_id = add_job(factory, owners["alice"])

    with session_scope(factory) as session:
        first = leases.claim_job(session, job_id, "gpu0@a/1", "cpu", lease_seconds=30)
        second = leases.claim_job(session, job_id, "gpu1@b/2", "cpu", lease_seconds=30)

    assert first is not None and second is None
    job = load(factory, job_id)
    assert (job.status, job.lease_owner, job.attempts) == (JobStatus.RUNNING, "gpu0@a/1", 1)


def test_a_stale_lease_can_be_taken_over_and_the_old_holder_then_stops(factory, owners):
    job_id = add_job(factory, owners["alice"])
    with session_scope(factory) as session:
        leases.claim_job(session, job_id, "gpu0@a/1", "cpu", lease_seconds=30)
        session.get(Job, job_id).heartbeat_at = utcnow() - timedelta(minutes=5)

    with session_scope(factory) as session:
        assert leases.claim_job(session, job_id, "gpu1@b/2", "cpu", lease_seconds=30) is not None

    with session_scope(factory) as session:
        assert not leases.heartbeat(session, job_id, "gpu0@a/1")
        assert not leases.record_checkpoint(session, job_id, "gpu0@a/1", CHECKPOINT)
        assert not leases.finish_job(session, job_id, "gpu0@a/1", JobStatus.SUCCEEDED)
    with session_scope(factory) as session:
        assert leases.heartbeat(session, job_id, "gpu1@b/2")
        assert leases.record_checkpoint(session, job_id, "gpu1@b/2", CHECKPOINT)
        assert leases.finish_job(session, job_id, "gpu1@b/2", JobStatus.SUCCEEDED)
    job = load(factory, job_id)
    assert (job.status, job.lease_owner, job.attempts, job.iteration) == (JobStatus.SUCCEEDED, "gpu1@b/2", 2, 10)


def test_a_cancel_reaches_the_lease_holder_at_its_next_checkpoint(factory, owners):
    job_id = add_job(factory, owners["alice"])
    with session_scope(factory) as session:
        leases.claim_job(session, job_id, "gpu0@a/1", "cpu", lease_seconds=30)
        jobs.request_cancel(session, session.get(Job, job_id))

    with session_scope(factory) as session:
        assert not leases.record_checkpoint(session, job_id, "gpu0@a/1", CHECKPOINT)
    assert load(factory, job_id).status is JobStatus.RUNNING  # until the worker records the end


def test_batch_mates_are_taken_only_while_queued_and_not_asked_to_cancel(factory, owners):
    taken, canceled, running = (add_job(factory, owners["alice"]) for _ in range(3))
    with session_scope(factory) as session:
        jobs.request_cancel(session, session.get(Job, canceled))
        leases.claim_job(session, running, "gpu1@b/2", "cpu", lease_seconds=30)

    with session_scope(factory) as session:
        candidates = [job.id for job in leases.batch_candidates(session)]
        claimed = leases.claim_batch_mates(session, [taken, canceled, running], "gpu0@a/1", "cpu")

    assert candidates == [taken]
    assert [job.id for job in claimed] == [taken]
    assert load(factory, running).lease_owner == "gpu1@b/2"


def test_sweep_requeues_lost_jobs_gives_up_stalled_ones_and_resends_forgotten_ones(factory, owners):
    lost, exhausted, progressing, canceled, forgotten, fresh = (add_job(factory, owners["alice"]) for _ in range(6))
    long_ago = utcnow() - timedelta(hours=1)
    with session_scope(factory) as session:
        for job_id in (lost, exhausted, progressing, canceled):
            leases.claim_job(session, job_id, "gpu0@dead/1", "cpu", lease_seconds=30)
            session.get(Job, job_id).heartbeat_at = long_ago
        # Two attempts in a row already ended without saving anything new: this one is the third.
        session.get(Job, exhausted).stalled_attempts = 2
        # As many attempts before, but this one saved a state past where it resumed.
        session.get(Job, progressing).stalled_attempts = 2
        session.get(Job, progressing).saved_iteration = 50
        session.get(Job, canceled).cancel_requested = True
        session.get(Job, forgotten).created_at = long_ago
        jobs.mark_enqueued(session, fresh)

    with session_scope(factory) as session:
        result = leases.sweep(session, lease_seconds=30, requeue_after_seconds=600, max_attempts=3)

    assert result.to_send == sorted([lost, progressing, forgotten])
    assert result.ended == sorted([exhausted, canceled])
    assert [load(factory, job_id).status for job_id in (lost, exhausted, progressing, canceled, forgotten, fresh)] == [
        "queued",
        "failed",
        "queued",
        "canceled",
        "queued",
        "queued",
    ]
    assert load(factory, exhausted).error_code == "worker_lost"
    assert (load(factory, lost).stalled_attempts, load(factory, progressing).stalled_attempts) == (1, 0)


def test_only_attempts_that_save_nothing_new_use_up_the_attempts(factory, owners):
    job_id = add_job(factory, owners["alice"])
    saved = 0
    # Seven workers die in turn, each after saving a newer state: the job is never given up.
    for attempt in range(1, 8):
        with session_scope(factory) as session:
            assert not leases.give_up_stalled(session, job_id, 30, 3, dead_owners=[f"w@a/{attempt - 1}"])
            assert leases.claim_job(session, job_id, f"w@a/{attempt}", "cpu", 30, dead_owners=[f"w@a/{attempt - 1}"]) is not None
        saved += 100
        with session_scope(factory) as session:
            checkpoint = {**CHECKPOINT, "iteration": saved}
            assert leases.record_checkpoints(session, job_id, f"w@a/{attempt}", [checkpoint], has_preview=True, saved_iteration=saved)
    assert (load(factory, job_id).attempts, load(factory, job_id).stalled_attempts) == (7, 0)

    # Then each dies before saving anything: the third such attempt in a row is the last.
    for attempt in range(8, 11):
        with session_scope(factory) as session:
            assert not leases.give_up_stalled(session, job_id, 30, 3, dead_owners=[f"w@a/{attempt - 1}"])
            assert leases.claim_job(session, job_id, f"w@a/{attempt}", "cpu", 30, dead_owners=[f"w@a/{attempt - 1}"]) is not None
    assert load(factory, job_id).stalled_attempts == 2
    with session_scope(factory) as session:
        assert leases.give_up_stalled(session, job_id, 30, 3, dead_owners=["w@a/10"])
    job = load(factory, job_id)
    assert (job.status, job.error_code, job.attempts, job.stalled_attempts) == (JobStatus.FAILED, "worker_lost", 10, 3)


def test_a_released_job_is_queued_unsent_and_unleased(factory, owners):
    job_id = add_job(factory, owners["alice"])
    with session_scope(factory) as session:
        leases.claim_job(session, job_id, "gpu0@a/1", "cpu", lease_seconds=30)
        jobs.mark_enqueued(session, job_id)

    with session_scope(factory) as session:
        assert leases.release_job(session, job_id, "gpu0@b/2") is None  # not the holder
        assert leases.release_job(session, job_id, "gpu0@a/1") is JobStatus.QUEUED
    job = load(factory, job_id)
    assert (job.status, job.lease_owner, job.enqueued_at, job.stalled_attempts) == (JobStatus.QUEUED, None, None, 0)
    with session_scope(factory) as session:
        assert not leases.heartbeat(session, job_id, "gpu0@a/1")


def test_a_job_released_with_the_state_saved_as_it_stopped_resumes_from_that_state(factory, owners):
    job_id = add_job(factory, owners["alice"])
    with session_scope(factory) as session:
        leases.claim_job(session, job_id, "gpu0@a/1", "cpu", lease_seconds=30)
        assert leases.record_checkpoints(session, job_id, "gpu0@a/1", [{**CHECKPOINT, "iteration": 80}], saved_iteration=50)
    with session_scope(factory) as session:
        # The worker, told to stop at 80, saved its state there and hands the job back.
        assert leases.release_job(session, job_id, "gpu0@a/1", saved_iteration=80) is JobStatus.QUEUED
        assert leases.claim_job(session, job_id, "gpu0@b/2", "cpu", lease_seconds=30) is not None
    job = load(factory, job_id)
    assert (job.saved_iteration, job.resumed_iteration, job.stalled_attempts) == (80, 80, 0)


def test_an_attempt_records_the_state_it_resumed_from_when_newer_than_the_database_knew(factory, owners):
    job_id = add_job(factory, owners["alice"])
    with session_scope(factory) as session:
        leases.claim_job(session, job_id, "gpu0@a/1", "cpu", lease_seconds=30)
        assert leases.record_checkpoints(session, job_id, "gpu0@a/1", [{**CHECKPOINT, "iteration": 60}], saved_iteration=50)
        # The holder dies just after writing a state at 60; the next attempt finds and resumes from it.
        assert leases.claim_job(session, job_id, "gpu0@b/2", "cpu", lease_seconds=30, dead_owners=["gpu0@a/1"]) is not None
        leases.record_resumed(session, job_id, "gpu0@c/3", 60)  # not the holder: nothing changes
    assert (load(factory, job_id).saved_iteration, load(factory, job_id).resumed_iteration) == (50, 50)
    with session_scope(factory) as session:
        leases.record_resumed(session, job_id, "gpu0@b/2", 60)
    assert (load(factory, job_id).saved_iteration, load(factory, job_id).resumed_iteration) == (60, 60)


def test_a_release_for_a_failing_store_counts_and_ends_the_job_at_the_last_attempt(factory, owners):
    job_id = add_job(factory, owners["alice"])
    for attempt in range(1, 4):
        with session_scope(factory) as session:
            leases.claim_job(session, job_id, f"w@a/{attempt}", "cpu", lease_seconds=30)
            status = leases.release_job(
                session,
                job_id,
                f"w@a/{attempt}",
                failed=True,
                max_attempts=3,
                error_code="storage_error",
                error_message="the result could not be stored",
            )
        assert status is (JobStatus.FAILED if attempt == 3 else JobStatus.QUEUED)
    job = load(factory, job_id)
    assert (job.error_code, job.error_message) == ("storage_error", "the result could not be stored")


def test_the_sweep_releases_at_once_a_lease_held_by_a_dead_process(factory, owners):
    job_id = add_job(factory, owners["alice"])
    with session_scope(factory) as session:
        leases.claim_job(session, job_id, "gpu0@a/1", "cpu", lease_seconds=30)

    with session_scope(factory) as session:
        assert leases.sweep(session, lease_seconds=30, requeue_after_seconds=600, max_attempts=3).to_send == []
        assert leases.sweep(session, lease_seconds=30, requeue_after_seconds=600, max_attempts=3, dead_owners=["gpu0@a/1"]).to_send == [
            job_id
        ]
    assert load(factory, job_id).status is JobStatus.QUEUED


def test_a_lease_held_by_a_dead_process_is_taken_over_at_once(factory, owners):
    job_id = add_job(factory, owners["alice"])
    with session_scope(factory) as session:
        leases.claim_job(session, job_id, "gpu0@a/1", "cpu", lease_seconds=30)

    with session_scope(factory) as session:
        # The heartbeat is fresh: only a holder known to be dead gives the job up.
        assert leases.claim_job(session, job_id, "gpu0@a/2", "cpu", lease_seconds=30, dead_owners=["gpu1@a/7"]) is None
        assert leases.claim_job(session, job_id, "gpu0@a/2", "cpu", lease_seconds=30, dead_owners=["gpu0@a/1"]) is not None
    job = load(factory, job_id)
    assert (job.status, job.lease_owner, job.attempts) == (JobStatus.RUNNING, "gpu0@a/2", 2)


def test_the_lease_owners_on_one_host_are_those_of_running_jobs_named_for_it(factory, owners):
    mine, unnamed, other_host, similar_host = (add_job(factory, owners["alice"]) for _ in range(4))
    with session_scope(factory) as session:
        leases.claim_job(session, mine, "gpu0@box/11", "cpu", lease_seconds=30)
        leases.claim_job(session, unnamed, "box/14", "cpu", lease_seconds=30)
        leases.claim_job(session, other_host, "gpu0@other/12", "cpu", lease_seconds=30)
        leases.claim_job(session, similar_host, "gpu0@box2/13", "cpu", lease_seconds=30)

    with session_scope(factory) as session:
        assert leases.local_lease_owners(session, "box") == ["box/14", "gpu0@box/11"]


def test_a_job_never_sent_is_sent_at_the_next_sweep_after_a_short_grace(factory, owners):
    job_id = add_job(factory, owners["alice"])
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        job.enqueued_at = None
        created = job.created_at

    with session_scope(factory) as session:
        assert (
            leases.sweep(session, lease_seconds=30, requeue_after_seconds=600, max_attempts=3, now=created + timedelta(seconds=1)).to_send
            == []
        )
        assert leases.sweep(
            session,
            lease_seconds=30,
            requeue_after_seconds=600,
            max_attempts=3,
            now=created + timedelta(seconds=leases.NEVER_SENT_GRACE_SECONDS + 1),
        ).to_send == [job_id]
