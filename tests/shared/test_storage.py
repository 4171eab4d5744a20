"""Job files on disk: a saved state never goes back in time, and a deleted job's folder is never made again by a late write."""

from __future__ import annotations

import pytest

from shared.storage import Storage

JOB = "0123456789abcdef0123456789abcdef"


def test_the_newest_saved_state_is_kept_and_an_older_one_never_replaces_it(tmp_path):
    storage = Storage(tmp_path)
    storage.make_job_dir(JOB)

    assert storage.save_state(JOB, 20, b"twenty")
    assert storage.save_state(JOB, 40, b"forty")
    # A process frozen since iteration 30 wakes up and writes its state late: it is refused.
    assert not storage.save_state(JOB, 30, b"thirty")
    assert not storage.save_state(JOB, 40, b"forty again")

    assert storage.state_path(JOB).read_bytes() == b"forty"
    assert sorted(path.name for path in storage.job_dir(JOB).iterdir()) == ["state-000000040.pt"]


def test_a_state_saved_by_an_earlier_version_is_still_found_and_replaced(tmp_path):
    storage = Storage(tmp_path)
    storage.write_job_file(JOB, "state.pt", b"legacy")
    assert storage.state_path(JOB).name == "state.pt"

    assert storage.save_state(JOB, 10, b"ten")
    assert [path.name for path in storage.job_dir(JOB).iterdir()] == ["state-000000010.pt"]


def test_writes_after_a_delete_do_not_bring_the_job_back(tmp_path):
    storage = Storage(tmp_path)
    storage.make_job_dir(JOB)
    storage.delete_job_files(JOB)

    with pytest.raises(FileNotFoundError):
        storage.write_job_file(JOB, "preview.jpg", b"jpeg", create=False)
    with pytest.raises(FileNotFoundError):
        storage.save_state(JOB, 10, b"state")
    assert not storage.job_dir(JOB).exists()


def test_an_ended_job_keeps_no_state(tmp_path):
    storage = Storage(tmp_path)
    storage.make_job_dir(JOB)
    storage.save_state(JOB, 10, b"ten")
    storage.write_job_file(JOB, "result.png", b"png")

    storage.delete_states(JOB)

    assert storage.state_path(JOB) is None and storage.job_path(JOB, "result.png").exists()
