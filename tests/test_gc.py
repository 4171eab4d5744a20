"""`styleq gc`: what `--dry-run` lists is exactly what a run then removes, and nothing a live job needs goes; over a
directory and over object storage.

A storage directory and a database (SQLite and Postgres) hold jobs backdated 60 days: ended ones
whose files have outlived the default retention (results 30 days, previews 7, states 2, uploads 30),
and a queued and a running job with old uploads, saved states and previews that must all stay.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from styleq.cli import main
from styleq.shared.adapters.db import make_engine, make_session_factory, session_scope
from styleq.shared.adapters.models import Job, JobStatus
from styleq.shared.adapters.settings import load_settings
from styleq.shared.adapters.storage import Storage, open_storage
from styleq.shared.domain.params import resolve_params
from styleq.shared.service.jobs import create_job
from styleq.shared.service.keys import create_api_key
from tests.services import TEST_BUCKET

NOW = datetime.now(UTC)
LONG_AGO = NOW - timedelta(days=60)


@pytest.fixture
def storage(tmp_path, database_url, monkeypatch) -> Storage:
    """Point `styleq` at the test database and a storage directory of its own."""
    monkeypatch.setenv("STYLEQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STYLEQ_DATABASE_URL", database_url)
    monkeypatch.setenv("STYLEQ_STORAGE_DIR", str(tmp_path / "storage"))
    for kind in ("RESULTS", "PREVIEWS", "STATES", "UPLOADS"):
        monkeypatch.delenv(f"STYLEQ_KEEP_{kind}_DAYS", raising=False)
    return Storage(tmp_path / "storage")


def upload(storage: Storage, name: str, modified: datetime = LONG_AGO) -> str:
    """Store an upload made of `name`'s bytes, dated `modified`; return its hash."""
    sha = storage.save_upload(name.encode())
    backdate(storage.upload_path(sha), modified)
    return sha


def backdate(path: Path, moment: datetime) -> None:
    os.utime(path, (moment.timestamp(), moment.timestamp()))


def add_job(
    factory, owner, content: str, style: str, status: JobStatus, ended: datetime | None, files: dict[str, bytes], storage: Storage
) -> str:
    """Add a job created 60 days ago in `status` (ended at `ended`), with `files` in its folder dated long ago."""
    with session_scope(factory) as session:
        job, _ = create_job(session, owner, resolve_params({"iterations": 100}), content, style)
        job.status, job.created_at, job.finished_at = status, LONG_AGO, ended
        if status is JobStatus.RUNNING:
            job.started_at, job.lease_owner, job.heartbeat_at = LONG_AGO, "gpu0@host/1", NOW
        job_id = job.id
    for name, data in files.items():
        backdate(storage.write_job_file(job_id, name, data), LONG_AGO)
    return job_id


def files_on_disk(storage: Storage) -> set[str]:
    return {str(path) for path in storage.root.rglob("*") if path.is_file()}


def gc(*args: str) -> Result:
    result = CliRunner().invoke(main, ["gc", *args])
    assert result.exit_code == 0, result.output
    return result


def listed(result: Result) -> tuple[list[str], list[str]]:
    """Split gc's standard output into its file lines and its total line's fields."""
    *lines, total = result.stdout.splitlines()
    return lines, total.split("\t")


def test_gc_dry_run_lists_exactly_what_gc_removes_and_spares_what_live_jobs_need(storage, database_url):
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        owner, _ = create_api_key(session, "alice", secret="gc-tests")
    shared_with_queued, only_old, running_content = upload(storage, "shared"), upload(storage, "old"), upload(storage, "running")
    recent, unused_old, unused_new = upload(storage, "recent"), upload(storage, "unused-old"), upload(storage, "unused-new", NOW)
    state = {"state-000000050.pt": b"s" * 500}
    old_done = add_job(
        factory,
        owner,
        only_old,
        shared_with_queued,
        JobStatus.SUCCEEDED,
        LONG_AGO,
        {"result.png": b"r" * 1000, "preview.jpg": b"p" * 100, **state},
        storage,
    )
    recently_done = add_job(
        factory,
        owner,
        recent,
        recent,
        JobStatus.SUCCEEDED,
        NOW - timedelta(days=1),
        {"result.png": b"r" * 1000, "preview.jpg": b"p" * 100, **state},
        storage,
    )
    failed = add_job(
        factory, owner, recent, recent, JobStatus.FAILED, NOW - timedelta(days=10), {"preview.jpg": b"p" * 100, **state}, storage
    )
    # A job handed back to the queue keeps its saved state and preview to resume from; a running one writes them.
    queued = add_job(
        factory, owner, shared_with_queued, shared_with_queued, JobStatus.QUEUED, None, {"preview.jpg": b"p" * 100, **state}, storage
    )
    running = add_job(
        factory, owner, running_content, shared_with_queued, JobStatus.RUNNING, None, {"preview.jpg": b"p" * 100, **state}, storage
    )
    before = files_on_disk(storage)

    dry_run = gc("--dry-run")
    assert files_on_disk(storage) == before
    run = gc()

    planned, (_, _, planned_bytes, planned_note) = listed(dry_run)
    removed, (_, count, removed_bytes, note) = listed(run)
    assert planned == removed and planned_bytes == removed_bytes and "dry run" in planned_note and note == "freed"
    expected = {
        ("upload", only_old),
        ("upload", unused_old),
        ("result", old_done),
        ("preview", old_done),
        ("state", old_done),
        ("preview", failed),
        ("state", failed),
    }
    assert {tuple(line.split("\t")[:2]) for line in removed} == expected and count == f"{len(expected)} files"
    paths = {line.split("\t")[3] for line in removed}
    assert files_on_disk(storage) == before - paths
    assert (
        int(removed_bytes) == sum(int(line.split("\t")[2]) for line in removed) == len("old") + len("unused-old") + 1000 + 2 * 100 + 2 * 500
    )
    for job_id in (queued, running, recently_done):
        assert set(os.listdir(storage.job_dir(job_id))) >= {"preview.jpg", "state-000000050.pt"}
    for sha in (shared_with_queued, running_content, recent, unused_new):
        assert storage.upload_path(sha).is_file()
    with session_scope(factory) as session:
        expired = dict(session.execute(select(Job.id, Job.result_expired_at)).all())
    assert expired[old_done] is not None and expired[recently_done] is None
    assert gc().stdout.splitlines() == ["total\t0 files\t0\tfreed"]
    engine.dispose()


def test_older_than_applies_one_age_to_every_kind_and_refuses_a_bad_age(storage, database_url):
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        owner, _ = create_api_key(session, "alice", secret="gc-tests")
    sha = upload(storage, "picture", NOW - timedelta(days=3))
    job_id = add_job(factory, owner, sha, sha, JobStatus.SUCCEEDED, NOW - timedelta(days=3), {"result.png": b"r"}, storage)

    assert listed(gc("--dry-run", "--older-than", "4d"))[0] == []
    lines, _ = listed(gc("--older-than", "36h"))

    assert {tuple(line.split("\t")[:2]) for line in lines} == {("upload", sha), ("result", job_id)}
    refused = CliRunner().invoke(main, ["gc", "--older-than", "soon"])
    assert refused.exit_code == 2 and "not a positive age" in refused.output
    engine.dispose()


def test_gc_removes_what_outlived_its_retention_from_object_storage_and_spares_a_live_job(
    tmp_path, database_url, monkeypatch, s3_environment
):
    """The same sweep over SeaweedFS's S3, whose objects cannot be backdated: every kind kept 1 s, and 2 s waited."""
    for name, value in s3_environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STYLEQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STYLEQ_DATABASE_URL", database_url)
    monkeypatch.setenv("STYLEQ_STORAGE_URL", f"s3://{TEST_BUCKET}/gc-{uuid.uuid4().hex}")
    storage = open_storage(load_settings())
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        owner, _ = create_api_key(session, "alice", secret="gc-tests")
    done_content, running_content = storage.save_upload(b"done"), storage.save_upload(b"running")
    with session_scope(factory) as session:
        done, _ = create_job(session, owner, resolve_params({"iterations": 100}), done_content, done_content)
        running, _ = create_job(session, owner, resolve_params({"iterations": 100}), running_content, running_content)
        done.status, done.finished_at = JobStatus.SUCCEEDED, NOW
        running.status, running.started_at, running.lease_owner, running.heartbeat_at = JobStatus.RUNNING, NOW, "gpu0@host/1", NOW
        done_id, running_id = done.id, running.id
    for job_id in (done_id, running_id):
        storage.make_job_dir(job_id)
        storage.write_job_file(job_id, "preview.jpg", b"p" * 100, create=False)
        storage.save_state(job_id, 50, b"s" * 500)
    storage.write_job_file(done_id, "result.png", b"r" * 1000, create=False)
    time.sleep(2)

    planned, _ = listed(gc("--dry-run", "--older-than", "1s"))
    removed, (_, count, removed_bytes, _) = listed(gc("--older-than", "1s"))

    assert planned == removed and count == "4 files" and int(removed_bytes) == len("done") + 1000 + 100 + 500
    assert {tuple(line.split("\t")[:2]) for line in removed} == {
        ("upload", done_content),
        ("result", done_id),
        ("preview", done_id),
        ("state", done_id),
    }
    assert all(line.split("\t")[3].startswith(storage.location) for line in removed)
    assert storage.has_upload(running_content) and storage.load_state(running_id) == b"s" * 500
    assert storage.has_job_file(running_id, "preview.jpg") and not storage.has_job_file(done_id, "result.png")
    engine.dispose()
