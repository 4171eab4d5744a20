"""The workers' side of the service: one claim wins, a lease is its holder's alone, and the sweep recovers lost jobs."""

from __future__ import annotations

from datetime import timedelta

from shared import jobs, leases
from shared.db import session_scope
from shared.models import Job, JobStatus, utcnow
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


def test_sweep_requeues_lost_jobs_gives_up_after_max_attempts_and_resends_forgotten_ones(factory, owners):
    lost, exhausted, canceled, forgotten, fresh = (add_job(factory, owners["alice"]) for _ in range(5))
    long_ago = utcnow() - timedelta(hours=1)
    with session_scope(factory) as session:
        for job_id in (lost, exhausted, canceled):
            leases.claim_job(session, job_id, "gpu0@dead/1", "cpu", lease_seconds=30)
            session.get(Job, job_id).heartbeat_at = long_ago
        session.get(Job, exhausted).attempts = 3
        session.get(Job, canceled).cancel_requested = True
        session.get(Job, forgotten).created_at = long_ago
        jobs.mark_enqueued(session, fresh)

    with session_scope(factory) as session:
        resend = leases.sweep(session, lease_seconds=30, requeue_after_seconds=600, max_attempts=3)

    assert resend == sorted([lost, forgotten])
    assert [load(factory, job_id).status for job_id in (lost, exhausted, canceled, forgotten, fresh)] == [
        "queued", "failed", "canceled", "queued", "queued",
    ]
    assert load(factory, exhausted).error_code == "worker_lost"
