"""Retention on a real database and both stores: an upload taken up again between judging and removing stays; files past
their retention go, and storage in use by kind. Objects cannot be backdated, so the sweeps here judge them from 60 days on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import JobStatus
from styleq.shared.adapters.object_storage import ObjectStorage
from styleq.shared.adapters.storage import Storage
from styleq.shared.domain.params import resolve_params
from styleq.shared.service.jobs import create_job
from styleq.shared.service.retention import RetentionPolicy, find_expired, remove_expired, storage_usage
from tests.shared.conftest import add_job

NOW = datetime.now(UTC)
LATER = NOW + timedelta(days=60)
POLICY = RetentionPolicy.uniform(timedelta(days=30))


def test_an_upload_a_new_job_takes_up_after_it_was_judged_is_not_removed(factory, storage, owners):
    sha = storage.save_upload(b"picture")
    add_job(factory, owners["alice"], content_sha256=sha, status=JobStatus.SUCCEEDED, created_at=NOW, finished_at=NOW)
    with session_scope(factory) as session:
        judged = find_expired(session, storage, POLICY, now=LATER)
    assert [(removal.kind, removal.owner) for removal in judged] == [("upload", sha)]

    # A submission of the same picture finds it stored, keeps it as it is, and commits its job.
    with session_scope(factory) as session:
        create_job(session, owners["bob"], resolve_params({"iterations": 100}), sha, sha)
    removed = remove_expired(factory, storage, judged, POLICY, now=LATER)

    assert removed == [] and storage.read_upload(sha) == b"picture"
    assert [file.kind for file in storage.walk()] == ["upload"]  # the copy set aside is gone too


def test_the_files_of_a_job_past_their_retention_go_and_a_live_jobs_stay(factory, storage, owners):
    done = add_job(factory, owners["alice"], status=JobStatus.SUCCEEDED, created_at=NOW, finished_at=NOW)
    running = add_job(factory, owners["alice"], status=JobStatus.RUNNING, created_at=NOW)
    for job_id in (done, running):
        storage.make_job_dir(job_id)
        storage.write_job_file(job_id, "preview.jpg", b"jpeg", create=False)
        storage.save_state(job_id, 10, b"state")
    storage.write_job_file(done, "result.png", b"png", create=False)

    with session_scope(factory) as session:
        judged = find_expired(session, storage, POLICY, now=LATER)
    removed = remove_expired(factory, storage, judged, POLICY, now=LATER)

    assert sorted((removal.kind, removal.owner) for removal in removed) == [("preview", done), ("result", done), ("state", done)]
    assert sorted(file.kind for file in storage.walk()) == ["preview", "state"] and storage.load_state(running) == b"state"
    assert not storage.has_job_file(done, "result.png")


def test_storage_usage_counts_the_bytes_of_each_kind(storage):
    storage.save_upload(b"u" * 10)
    job_id = "f" * 32
    storage.write_job_file(job_id, "result.png", b"r" * 100)
    storage.write_job_file("e" * 32, "result.webp", b"w" * 1000)  # a result in another format is a result too
    storage.write_job_file(job_id, "preview.jpg", b"p" * 20)
    storage.save_state(job_id, 5, b"s" * 300)
    # Something the store does not know: a temporary file a crash left behind, an object put there by hand.
    if isinstance(storage, Storage):
        (storage.job_dir(job_id) / ".result.png.x.partial").write_bytes(b"t" * 7)
    else:
        assert isinstance(storage, ObjectStorage)
        storage.client.put_object(Bucket=storage.bucket, Key=f"{storage.prefix}/jobs/ff/{job_id}/.result.png.x.partial", Body=b"t" * 7)

    assert storage_usage(storage) == {"uploads": 10, "results": 1100, "previews": 20, "states": 300, "other": 7}
