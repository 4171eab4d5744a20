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
        assert leases.sweep(session, lease_seconds=30, requeue_after_seconds=600, max_attempts=3, now=created + timedelta(seconds=1)) == []
        assert leases.sweep(session, lease_seconds=30, requeue_after_seconds=600, max_attempts=3,
                            now=created + timedelta(seconds=leases.NEVER_SENT_GRACE_SECONDS + 1)) == [job_id]
