"""The webhook outbox: each change a job's webhook wants is a row written with the change, claimed by one
deliverer at a time, tried again with backoff for a bounded time, and recorded."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import DeliveryStatus, Job, JobStatus, WebhookDelivery, utcnow
from styleq.shared.service import deliveries, jobs, leases
from styleq.shared.service.deliveries import Attempt
from styleq.shared.service.webhooks import Subscription
from tests.shared.conftest import add_job

CHECKPOINT = {"iteration": 10, "elapsed_s": 1.0, "content": 1.0, "style": 2.0, "tv": 0.5, "total": 3.5}
EVERY_EVENT = ("running", "checkpoint", "succeeded", "failed", "canceled")
RETRIES = {"backoff_seconds": 1.0, "retry_for_seconds": 60.0}


def add_hooked_job(factory, owner, events=EVERY_EVENT) -> str:
    return add_job(factory, owner, webhook_url="http://hooks.example/styleq", webhook_events=list(events))


def rows(factory, job_id: str) -> list[WebhookDelivery]:
    with session_scope(factory) as session:
        return list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.id)))


def claim(factory, lease_seconds: float = 30, now=None) -> deliveries.ClaimedDelivery | None:
    with session_scope(factory) as session:
        return deliveries.claim_due(session, lease_seconds=lease_seconds, now=now)


def test_a_claim_and_its_running_event_are_one_transaction(factory, owners):
    job_id = add_hooked_job(factory, owners["alice"])

    def claim_then_die() -> None:
        with session_scope(factory) as session:
            leases.claim_job(session, job_id, "gpu0@a/1", "cpu", lease_seconds=30)
            raise RuntimeError("the worker died before committing")

    with pytest.raises(RuntimeError, match="died before committing"):
        claim_then_die()
    assert rows(factory, job_id) == []

    with session_scope(factory) as session:
        leases.claim_job(session, job_id, "gpu0@a/1", "cpu", lease_seconds=30)

    [running] = rows(factory, job_id)
    body = json.loads(running.body)
    assert (running.event, running.status, running.attempts) == ("running", DeliveryStatus.PENDING, 0)
    assert running.message_id.startswith("msg_") and body["type"] == "job.running"
    assert body["data"]["id"] == job_id and body["data"]["status"] == "running" and body["data"]["attempts"] == 1
    assert body["timestamp"].endswith("Z") and body["data"]["links"]["result"] == f"/v1/jobs/{job_id}/result"


def test_only_the_events_a_job_names_are_delivered_and_a_job_without_a_webhook_has_none(factory, owners):
    hooked = add_hooked_job(factory, owners["alice"], events=("succeeded",))
    plain = add_job(factory, owners["alice"])
    for job_id in (hooked, plain):
        with session_scope(factory) as session:
            leases.claim_job(session, job_id, "gpu0@a/1", "cpu", lease_seconds=30)
            leases.record_checkpoint(session, job_id, "gpu0@a/1", CHECKPOINT)
            leases.finish_job(session, job_id, "gpu0@a/1", JobStatus.SUCCEEDED)

    assert [row.event for row in rows(factory, hooked)] == ["succeeded"]
    assert json.loads(rows(factory, hooked)[0].body)["data"]["progress"] == 1.0
    assert rows(factory, plain) == []


def test_checkpoints_fold_into_one_waiting_delivery_and_come_at_most_every_interval(factory, owners):
    job_id = add_hooked_job(factory, owners["alice"], events=("checkpoint",))
    with session_scope(factory) as session:
        leases.claim_job(session, job_id, "gpu0@a/1", "cpu", lease_seconds=30)
    for iteration in (10, 20, 30):
        with session_scope(factory) as session:
            leases.record_checkpoints(session, job_id, "gpu0@a/1", [{**CHECKPOINT, "iteration": iteration}], checkpoint_event_seconds=60)

    [waiting] = rows(factory, job_id)
    assert json.loads(waiting.body)["data"]["iteration"] == 30 and waiting.next_attempt_at <= utcnow()

    claimed = claim(factory)
    with session_scope(factory) as session:  # a checkpoint while it is being sent waits for the next delivery
        leases.record_checkpoints(session, job_id, "gpu0@a/1", [{**CHECKPOINT, "iteration": 40}], checkpoint_event_seconds=60)
    with session_scope(factory) as session:
        deliveries.record_attempt(session, claimed, Attempt(status_code=204), **RETRIES)
    with session_scope(factory) as session:
        leases.record_checkpoints(session, job_id, "gpu0@a/1", [{**CHECKPOINT, "iteration": 50}], checkpoint_event_seconds=60)

    sent, later = rows(factory, job_id)
    assert (sent.status, json.loads(sent.body)["data"]["iteration"]) == (DeliveryStatus.DELIVERED, 30)
    assert (later.status, json.loads(later.body)["data"]["iteration"]) == (DeliveryStatus.PENDING, 50)
    assert later.next_attempt_at >= sent.created_at + timedelta(seconds=59)
    assert claim(factory) is None  # not due for a minute


def test_the_end_drops_a_checkpoint_delivery_never_sent_so_no_progress_follows_it(factory, owners):
    job_id = add_hooked_job(factory, owners["alice"], events=("checkpoint", "failed"))
    with session_scope(factory) as session:
        leases.claim_job(session, job_id, "gpu0@a/1", "cpu", lease_seconds=30)
        leases.record_checkpoint(session, job_id, "gpu0@a/1", CHECKPOINT)
        leases.finish_job(session, job_id, "gpu0@a/1", JobStatus.FAILED, error_code="internal_error", error_message="boom")

    [failed] = rows(factory, job_id)
    assert failed.event == "failed" and json.loads(failed.body)["data"]["error"] == {"code": "internal_error", "message": "boom"}


def test_ends_recorded_by_the_api_and_the_sweeper_are_delivered_too(factory, owners):
    queued, lost, canceled = (add_hooked_job(factory, owners["alice"]) for _ in range(3))
    with session_scope(factory) as session:
        jobs.request_cancel(session, session.get(Job, queued))
        for job_id in (lost, canceled):
            leases.claim_job(session, job_id, "gpu0@a/1", "cpu", lease_seconds=30)
            session.get(Job, job_id).heartbeat_at = utcnow() - timedelta(minutes=5)
        session.get(Job, canceled).cancel_requested = True
    with session_scope(factory) as session:
        leases.sweep(session, lease_seconds=30, requeue_after_seconds=60, max_attempts=1)

    assert [row.event for row in rows(factory, queued)] == ["canceled"]
    assert [row.event for row in rows(factory, lost)] == ["running", "failed"]
    assert [row.event for row in rows(factory, canceled)] == ["running", "canceled"]


def test_one_deliverer_at_a_time_holds_a_delivery_until_its_claim_runs_out(factory, owners):
    job_id = add_hooked_job(factory, owners["alice"], events=("canceled",))
    with session_scope(factory) as session:
        jobs.request_cancel(session, session.get(Job, job_id))

    first = claim(factory, lease_seconds=30)
    assert first is not None and first.attempt == 1 and first.url == "http://hooks.example/styleq" and first.owner.name == "alice"
    assert claim(factory) is None
    again = claim(factory, now=utcnow() + timedelta(seconds=31))  # the first deliverer died mid-send
    assert again is not None and again.attempt == 2

    with session_scope(factory) as session:  # the first one's late word no longer counts
        assert deliveries.record_attempt(session, first, Attempt(status_code=200), **RETRIES) is None
        assert deliveries.record_attempt(session, again, Attempt(status_code=200), **RETRIES) is DeliveryStatus.DELIVERED


def test_on_postgres_deliverers_skip_a_delivery_another_has_locked_instead_of_waiting(factory, owners, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: its claims are one after the other")
    for _ in range(2):
        job_id = add_hooked_job(factory, owners["alice"], events=("canceled",))
        with session_scope(factory) as session:
            jobs.request_cancel(session, session.get(Job, job_id))

    with session_scope(factory) as holding:
        first = deliveries.claim_due(holding, lease_seconds=30)
        second = claim(factory)  # another connection, while the first claim's transaction is open
        third = claim(factory)

    assert first is not None and second is not None and first.id != second.id and third is None


def test_failed_attempts_are_retried_with_growing_waits_until_the_time_allowed_runs_out(factory, owners):
    job_id = add_hooked_job(factory, owners["alice"], events=("canceled",))
    with session_scope(factory) as session:
        jobs.request_cancel(session, session.get(Job, job_id))
    now = utcnow()
    waits = []
    for attempt in (Attempt(status_code=500), Attempt(error="ConnectionError: refused"), Attempt(status_code=503, retry_after=20)):
        claimed = claim(factory, now=now)
        with session_scope(factory) as session:
            assert deliveries.record_attempt(session, claimed, attempt, now=now, **RETRIES) is DeliveryStatus.PENDING
        [row] = rows(factory, job_id)
        waits.append((row.next_attempt_at - now).total_seconds())
        now = row.next_attempt_at
    assert 1 <= waits[0] <= 1.2 and 2 <= waits[1] <= 2.4 and waits[2] == pytest.approx(20, abs=0.01)
    assert (row.attempts, row.last_status_code, row.last_error) == (3, 503, "the receiver answered HTTP 503")

    claimed = claim(factory, now=now)
    with session_scope(factory) as session:  # the next wait would end past the 60 s allowed
        assert (
            deliveries.record_attempt(session, claimed, Attempt(status_code=500), now=now + timedelta(seconds=40), **RETRIES)
            is DeliveryStatus.FAILED
        )
    [row] = rows(factory, job_id)
    assert row.status is DeliveryStatus.FAILED and row.attempts == 4 and row.finished_at is not None
    assert claim(factory, now=now + timedelta(hours=1)) is None


def test_a_receiver_that_answers_410_gone_is_not_tried_again(factory, owners):
    job_id = add_hooked_job(factory, owners["alice"], events=("canceled",))
    with session_scope(factory) as session:
        jobs.request_cancel(session, session.get(Job, job_id))

    with session_scope(factory) as session:
        assert deliveries.record_attempt(session, claim(factory), Attempt(status_code=410), **RETRIES) is DeliveryStatus.FAILED


def test_the_counts_by_status_cover_every_job(factory, owners):
    for status_code in (200, 500, 410):
        job_id = add_hooked_job(factory, owners["alice"], events=("canceled",))
        with session_scope(factory) as session:
            jobs.request_cancel(session, session.get(Job, job_id))
        with session_scope(factory) as session:
            deliveries.record_attempt(session, claim(factory), Attempt(status_code=status_code), **RETRIES)

    with session_scope(factory) as session:
        assert deliveries.delivery_counts(session) == {"pending": 1, "delivered": 1, "failed": 1}


def test_an_idempotent_retry_must_name_the_same_webhook(factory, owners):
    from styleq.shared.domain.params import resolve_params

    params, hook = resolve_params({"iterations": 10}), Subscription("http://hooks.example/a", ("succeeded",))
    with session_scope(factory) as session:
        first, _ = jobs.create_job(session, owners["alice"], params, "a" * 64, "b" * 64, "key-1", webhook=hook)
        again, created = jobs.create_job(session, owners["alice"], params, "a" * 64, "b" * 64, "key-1", webhook=hook)
        assert again.id == first.id and not created
        with pytest.raises(Exception, match="different webhook"):
            jobs.create_job(session, owners["alice"], params, "a" * 64, "b" * 64, "key-1", webhook=Subscription("http://hooks.example/b"))
