"""Fair use per key, in the database: requests counted per minute with one upsert, and jobs queued or running at once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from styleq.shared.adapters.models import JobStatus, RequestWindow
from styleq.shared.domain.errors import LimitExceeded
from styleq.shared.domain.params import resolve_params
from styleq.shared.service import jobs, limits
from tests.shared.conftest import add_job

NOON = datetime(2026, 11, 28, 12, 0, 15, tzinfo=UTC)
PARAMS = resolve_params({"iterations": 50})


def count(factory, owner, limit: int, now: datetime) -> None:
    with factory() as session:
        limits.count_request(session, owner, limit=limit, now=now)
        session.commit()


def windows(factory) -> list[tuple[int, datetime, int]]:
    with factory() as session:
        rows = session.execute(select(RequestWindow.api_key_id, RequestWindow.window_start, RequestWindow.requests)).all()
        return sorted(tuple(row) for row in rows)


def run_together(count_of_threads: int, action) -> list[BaseException | None]:
    """Run `action()` in that many threads released at once; return what each raised, or None."""
    start = threading.Barrier(count_of_threads)
    outcomes: list[BaseException | None] = [None] * count_of_threads

    def run(index: int) -> None:
        start.wait()
        try:
            action()
        except BaseException as error:  # noqa: BLE001 (the outcome is the test's to judge)
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count_of_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def test_requests_past_the_limit_in_one_minute_are_refused_until_the_minute_ends(factory, owners):
    for _ in range(3):
        count(factory, owners["alice"], 3, NOON)

    with pytest.raises(LimitExceeded) as refused:
        count(factory, owners["alice"], 3, NOON + timedelta(seconds=20))

    assert refused.value.code == "too_many_requests" and refused.value.retry_after_seconds == 25
    assert "3 requests" in refused.value.message
    count(factory, owners["alice"], 3, NOON + timedelta(seconds=45))  # the minute after noon


def test_a_refused_request_is_not_counted(factory, owners):
    count(factory, owners["alice"], 1, NOON)
    with factory() as session, pytest.raises(LimitExceeded):
        limits.count_request(session, owners["alice"], limit=1, now=NOON)

    assert windows(factory) == [(owners["alice"].id, NOON.replace(second=0), 1)]


def test_a_keys_first_request_of_a_minute_deletes_its_older_windows_and_no_one_elses(factory, owners):
    count(factory, owners["alice"], 10, NOON)
    count(factory, owners["bob"], 10, NOON)

    count(factory, owners["alice"], 10, NOON + timedelta(minutes=3))

    assert windows(factory) == [
        (owners["alice"].id, datetime(2026, 11, 28, 12, 3, tzinfo=UTC), 1),
        (owners["bob"].id, datetime(2026, 11, 28, 12, 0, tzinfo=UTC), 1),
    ]


def test_admin_keys_and_a_limit_of_zero_count_nothing(factory, owners):
    for _ in range(5):
        count(factory, owners["admin"], 1, NOON)
        count(factory, owners["alice"], 0, NOON)

    assert windows(factory) == []


def test_requests_counted_at_once_by_many_connections_get_exactly_the_limit(factory, owners):
    outcomes = run_together(12, lambda: count(factory, owners["alice"], 5, NOON))

    assert sum(outcome is None for outcome in outcomes) == 5
    assert all(isinstance(outcome, LimitExceeded) for outcome in outcomes if outcome is not None)
    assert windows(factory) == [(owners["alice"].id, NOON.replace(second=0), 5)]


def test_a_job_past_the_active_jobs_limit_is_refused_and_rolled_back(factory, owners):
    add_job(factory, owners["alice"])
    add_job(factory, owners["alice"], status=JobStatus.RUNNING)
    add_job(factory, owners["alice"], status=JobStatus.SUCCEEDED)

    with factory() as session, pytest.raises(LimitExceeded) as refused:
        jobs.create_job(session, owners["alice"], PARAMS, "c" * 64, "d" * 64, max_active_jobs=2)

    assert refused.value.code == "too_many_active_jobs" and refused.value.retry_after_seconds == limits.ACTIVE_JOBS_RETRY_AFTER_SECONDS
    with factory() as session:
        _, created = jobs.create_job(session, owners["bob"], PARAMS, "c" * 64, "d" * 64, max_active_jobs=2)
        _, admin_created = jobs.create_job(session, owners["admin"], PARAMS, "c" * 64, "d" * 64, max_active_jobs=0)
        session.commit()
    assert created and admin_created


def test_jobs_submitted_at_once_by_many_connections_stop_at_the_active_jobs_limit(factory, owners):
    def create() -> None:
        with factory() as session:
            jobs.create_job(session, owners["alice"], PARAMS, "c" * 64, "d" * 64, max_active_jobs=3)
            session.commit()

    outcomes = run_together(8, create)

    assert sum(outcome is None for outcome in outcomes) == 3, outcomes
    assert all(isinstance(outcome, LimitExceeded) for outcome in outcomes if outcome is not None)
