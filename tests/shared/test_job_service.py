"""The clients' side of the service, as the API, the dashboard and the sweeper call it: submit, enqueue, list, delete."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import func, select

from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import Job, JobStatus
from styleq.shared.domain.errors import InvalidInput, Unprocessable
from styleq.shared.domain.params import resolve_params
from styleq.shared.service import jobs
from tests.shared.conftest import add_job, load

PARAMS = resolve_params({"iterations": 50})
CONTENT, STYLE = b"content image bytes", b"style image bytes"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_submit_job_stores_both_uploads_and_a_queued_job(factory, storage, owners):
    with factory() as session:
        job, created = jobs.submit_job(session, storage, owners["alice"], CONTENT, STYLE, PARAMS)

    assert created
    stored = load(factory, job.id)
    assert (stored.status, stored.content_sha256, stored.style_hashes, stored.iterations) == (
        JobStatus.QUEUED,
        sha(CONTENT),
        [sha(STYLE)],
        50,
    )
    assert storage.read_upload(sha(CONTENT)) == CONTENT and storage.read_upload(sha(STYLE)) == STYLE


def test_a_repeated_idempotency_key_returns_the_first_job(factory, storage, owners):
    with factory() as session:
        first, _ = jobs.submit_job(session, storage, owners["alice"], CONTENT, STYLE, PARAMS, "key-1")
    with factory() as session:
        again, created = jobs.submit_job(session, storage, owners["alice"], CONTENT, STYLE, resolve_params({"iterations": 50}), "key-1")
        again_id = again.id

    assert not created and again_id == first.id
    assert storage.has_upload(sha(CONTENT)) and storage.has_upload(sha(STYLE))


@pytest.mark.parametrize(
    ("content", "style", "params"),
    [(b"other content", STYLE, PARAMS), (CONTENT, b"other style", PARAMS), (CONTENT, STYLE, resolve_params({"iterations": 60}))],
    ids=["content", "style", "params"],
)
def test_an_idempotency_key_reused_for_another_request_is_refused_and_keeps_none_of_its_files(
    factory, storage, owners, content, style, params
):
    with factory() as session:
        first, _ = jobs.submit_job(session, storage, owners["alice"], CONTENT, STYLE, PARAMS, "key-1")

    with factory() as session, pytest.raises(Unprocessable) as refused:
        jobs.submit_job(session, storage, owners["alice"], content, style, params, "key-1")

    assert refused.value.code == "idempotency_key_reused" and first.id in refused.value.message
    assert not storage.has_upload(sha(b"other content")) and not storage.has_upload(sha(b"other style"))
    assert storage.has_upload(sha(CONTENT))
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_a_submission_that_fails_leaves_no_new_file(factory, storage, owners, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(jobs, "create_job", refuse)
    with factory() as session, pytest.raises(RuntimeError):
        jobs.submit_job(session, storage, owners["alice"], CONTENT, STYLE, PARAMS)

    assert not storage.has_upload(sha(CONTENT)) and not storage.has_upload(sha(STYLE))


def test_enqueue_job_sends_the_id_then_records_when(factory, owners):
    job_id = add_job(factory, owners["alice"])
    sent = []

    with factory() as session:
        assert jobs.enqueue_job(session, sent.append, job_id)

    assert sent == [job_id] and load(factory, job_id).enqueued_at is not None


def test_a_job_the_broker_refuses_stays_queued_and_unmarked_for_the_sweeper(factory, owners, caplog):
    job_id = add_job(factory, owners["alice"])

    def broker_down(_job_id: str) -> None:
        raise ConnectionError("broker down")

    with factory() as session:
        assert not jobs.enqueue_job(session, broker_down, job_id)

    job = load(factory, job_id)
    assert job.status is JobStatus.QUEUED and job.enqueued_at is None
    assert "the sweeper will send it later" in caplog.text


def test_list_jobs_refuses_an_unknown_status_and_another_clients_cursor(factory, owners):
    alices = add_job(factory, owners["alice"])
    with session_scope(factory) as session:
        with pytest.raises(InvalidInput, match="status must be one of"):
            jobs.list_jobs(session, owners["alice"], status="lost")
        with pytest.raises(InvalidInput, match="is not a job of this client"):
            jobs.list_jobs(session, owners["bob"], cursor=alices)
        assert [job.id for job in jobs.list_jobs(session, owners["admin"]).jobs] == [alices]


def test_delete_job_removes_its_row_files_and_the_uploads_no_other_job_uses(factory, storage, owners):
    with factory() as session:
        shared_style, _ = jobs.submit_job(session, storage, owners["alice"], CONTENT, STYLE, PARAMS)
        doomed, _ = jobs.submit_job(session, storage, owners["alice"], b"another content", STYLE, PARAMS)
    storage.write_job_file(doomed.id, "result.png", b"png")

    with factory() as session:
        jobs.delete_job(session, storage, session.get(Job, doomed.id))

    assert load(factory, doomed.id) is None and not storage.has_job_file(doomed.id, "result.png")
    assert not storage.has_upload(sha(b"another content"))
    assert storage.has_upload(sha(STYLE)) and load(factory, shared_style.id) is not None
