"""The store's promises, on both backends (`storage`: a folder, and SeaweedFS's S3): uploads once by their hash,
nothing half-written, a saved state never going back in time, a deleted job never brought back by a late write."""

from __future__ import annotations

import hashlib
import threading

import pytest
import requests

from styleq.shared.adapters.object_storage import ObjectStorage
from styleq.shared.adapters.storage import Storage, Store, StoreUnreachable
from tests.services import free_port

JOB = "0123456789abcdef0123456789abcdef"


def names(storage: Store, job_id: str = JOB) -> list[str]:
    """Return the names of the job's files the store's walk finds."""
    return sorted(file.path.rsplit("/", 1)[-1] for file in storage.walk() if file.owner == job_id or f"/{job_id}/" in file.path)


def test_an_upload_is_stored_once_under_its_content_hash(storage):
    sha = storage.save_upload(b"picture")

    assert sha == hashlib.sha256(b"picture").hexdigest() and storage.save_upload(b"picture") == sha
    assert storage.has_upload(sha) and storage.read_upload(sha) == b"picture"
    assert [(file.kind, file.owner, file.size) for file in storage.walk()] == [("upload", sha, 7)]
    storage.delete_upload(sha)
    assert not storage.has_upload(sha)
    with pytest.raises(FileNotFoundError):
        storage.read_upload(sha)


def test_the_newest_saved_state_is_kept_and_an_older_one_never_replaces_it(storage):
    storage.make_job_dir(JOB)

    assert storage.save_state(JOB, 20, b"twenty")
    assert storage.save_state(JOB, 40, b"forty")
    # A process frozen since iteration 30 wakes up and writes its state late: it is refused.
    assert not storage.save_state(JOB, 30, b"thirty")
    assert not storage.save_state(JOB, 40, b"forty again")

    assert storage.load_state(JOB) == b"forty"
    assert names(storage) == ["state-000000040.pt"]


def test_of_two_writers_racing_the_newer_state_is_the_one_read(storage):
    storage.make_job_dir(JOB)
    storage.save_state(JOB, 10, b"ten")
    results: dict[int, bool] = {}

    def save(iteration: int) -> None:
        results[iteration] = storage.save_state(JOB, iteration, str(iteration).encode())

    writers = [threading.Thread(target=save, args=(iteration,)) for iteration in (30, 50, 40)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()

    assert results[50] and storage.load_state(JOB) == b"50"
    assert storage.save_state(JOB, 60, b"60") and names(storage) == ["state-000000060.pt"]


def test_a_state_saved_by_an_earlier_version_is_still_found_and_replaced(storage):
    storage.write_job_file(JOB, "state.pt", b"legacy")
    assert storage.load_state(JOB) == b"legacy"

    assert storage.save_state(JOB, 10, b"ten")
    assert names(storage) == ["state-000000010.pt"]


def test_writes_after_a_delete_do_not_bring_the_job_back(storage):
    storage.make_job_dir(JOB)
    storage.write_job_file(JOB, "preview.jpg", b"jpeg", create=False)
    storage.delete_job_files(JOB)

    with pytest.raises(FileNotFoundError):
        storage.write_job_file(JOB, "preview.jpg", b"jpeg", create=False)
    with pytest.raises(FileNotFoundError):
        storage.save_state(JOB, 10, b"state")
    assert names(storage) == [] and not storage.has_job_file(JOB, "preview.jpg")


def test_a_write_that_lands_while_its_job_is_deleted_removes_itself(storage, monkeypatch):
    """The delete runs between the writer's check that the job stands and its write, the worst moment for it."""
    storage.make_job_dir(JOB)
    if isinstance(storage, ObjectStorage):
        put = storage._put

        def put_after_a_delete(key: str, data: bytes) -> None:
            storage.delete_job_files(JOB)
            put(key, data)

        monkeypatch.setattr(storage, "_put", put_after_a_delete)
    else:
        # The directory's writer holds the folder's descriptor: a delete then leaves its rename nowhere to land.
        storage.delete_job_files(JOB)

    with pytest.raises(FileNotFoundError):
        storage.write_job_file(JOB, "result.png", b"png", create=False)
    monkeypatch.undo()
    assert names(storage) == []


def test_an_ended_job_keeps_no_state(storage):
    storage.make_job_dir(JOB)
    storage.save_state(JOB, 10, b"ten")
    storage.write_job_file(JOB, "result.png", b"png")

    storage.delete_states(JOB)

    assert storage.load_state(JOB) is None and storage.read_job_file(JOB, "result.png") == b"png"


def test_a_job_file_opens_as_a_stream_with_its_size_and_a_version_tag_that_changes_with_it(storage):
    storage.write_job_file(JOB, "preview.jpg", b"first")
    opened = storage.open_job_file(JOB, "preview.jpg")
    with opened.stream:
        assert (opened.stream.read(), opened.size) == (b"first", 5)
    storage.write_job_file(JOB, "preview.jpg", b"second preview")
    again = storage.open_job_file(JOB, "preview.jpg")
    again.stream.close()

    assert again.size == 14 and again.etag != opened.etag
    with pytest.raises(FileNotFoundError):
        storage.open_job_file(JOB, "result.png")


def test_an_upload_set_aside_is_out_of_sight_until_restored_and_a_walked_file_can_be_removed(storage):
    sha = storage.save_upload(b"picture")

    aside = storage.set_aside_upload(sha)
    assert aside is not None and not storage.has_upload(sha) and storage.set_aside_upload(sha) is None
    storage.restore_upload(sha, aside)
    assert storage.read_upload(sha) == b"picture"

    (found,) = [file for file in storage.walk() if file.kind == "upload"]
    storage.remove_file(found.path)
    assert not storage.has_upload(sha)
    with pytest.raises(FileNotFoundError):
        storage.remove_file(found.path)


def test_a_presigned_url_serves_the_result_without_the_api_where_the_store_has_them(storage):
    storage.write_job_file(JOB, "result.png", b"png bytes")

    url = storage.presigned_url(JOB, "result.png", seconds=60, media_type="image/png", download_name=f"{JOB}.png")

    if isinstance(storage, Storage):
        assert url is None  # a directory's files go through the API
    else:
        served = requests.get(url, timeout=10)
        assert served.content == b"png bytes" and served.headers["Content-Type"] == "image/png"
        assert f'filename="{JOB}.png"' in served.headers["Content-Disposition"]
        assert requests.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"), timeout=10).status_code == 403


def test_an_object_store_that_does_not_answer_is_unreachable_not_missing(monkeypatch, s3_environment):
    for name, value in s3_environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    nowhere = ObjectStorage.from_url("s3://styleq-tests/down")

    with pytest.raises(StoreUnreachable):
        nowhere.has_upload("a" * 64)
    with pytest.raises(StoreUnreachable):
        nowhere.save_state(JOB, 10, b"state")
