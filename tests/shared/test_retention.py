"""Retention on a real database: an upload taken up again between judging and removing stays; storage in use by kind."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from shared.db import session_scope
from shared.jobs import create_job
from shared.models import JobStatus
from shared.params import resolve_params
from shared.retention import RetentionPolicy, find_expired, remove_expired, storage_usage
from tests.shared.conftest import add_job

LONG_AGO = datetime.now(UTC) - timedelta(days=60)


def test_an_upload_a_new_job_takes_up_after_it_was_judged_is_not_removed(factory, storage, owners):
    sha = storage.save_upload(b"picture")
    os.utime(storage.upload_path(sha), (LONG_AGO.timestamp(),) * 2)
    add_job(factory, owners["alice"], content_sha256=sha, status=JobStatus.SUCCEEDED, created_at=LONG_AGO, finished_at=LONG_AGO)
    policy = RetentionPolicy.uniform(timedelta(days=30))
    with session_scope(factory) as session:
        judged = find_expired(session, storage, policy)
    assert [(removal.kind, removal.owner) for removal in judged] == [("upload", sha)]

    # A submission of the same picture finds it stored, keeps it as it is, and commits its job.
    with session_scope(factory) as session:
        create_job(session, owners["bob"], resolve_params({"iterations": 100}), sha, sha)
    removed = remove_expired(factory, storage, judged, policy)

    assert removed == [] and storage.upload_path(sha).read_bytes() == b"picture"
    assert not list(storage.upload_path(sha).parent.glob(".*"))


def test_storage_usage_counts_the_bytes_of_each_kind(storage):
    storage.save_upload(b"u" * 10)
    job_id = "f" * 32
    storage.write_job_file(job_id, "result.png", b"r" * 100)
    storage.write_job_file("e" * 32, "result.webp", b"w" * 1000)  # a result in another format is a result too
    storage.write_job_file(job_id, "preview.jpg", b"p" * 20)
    storage.save_state(job_id, 5, b"s" * 300)
    (storage.job_dir(job_id) / ".result.png.x.partial").write_bytes(b"t" * 7)

    assert storage_usage(storage) == {"uploads": 10, "results": 1100, "previews": 20, "states": 300, "other": 7}
