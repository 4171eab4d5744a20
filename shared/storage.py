"""Images and saved states on disk: uploads by content hash, results, previews and states by job id.

Every path is built here from a hash or a job id that this module checks, so nothing a request says
can point outside the storage directory. Every write goes to a temporary file that is renamed into
place, so a reader never sees half a file and a crash never leaves one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
JOB_FILES = ("result.png", "preview.jpg", "state.pt")


class Storage:
    """The storage directory of one deployment, shared by the API and every worker."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def upload_path(self, sha256: str) -> Path:
        """Return where the upload with this content hash lives."""
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / "uploads" / sha256[:2] / sha256

    def job_path(self, job_id: str, name: str) -> Path:
        """Return where the job's file `name` (one of JOB_FILES) lives."""
        if not _JOB_ID.match(job_id) or name not in JOB_FILES:
            raise ValueError(f"no such job file: {job_id!r}/{name!r}")
        return self.root / "jobs" / job_id[:2] / job_id / name

    def save_upload(self, data: bytes) -> str:
        """Store `data` once under its sha256 and return the hash."""
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.upload_path(sha256)
        if not path.is_file():
            write_atomically(path, data)
        return sha256

    def write_job_file(self, job_id: str, name: str, data: bytes) -> Path:
        """Write one of the job's files atomically and return its path."""
        path = self.job_path(job_id, name)
        write_atomically(path, data)
        return path

    def delete_job_files(self, job_id: str) -> None:
        """Remove every file of the job (its uploads stay: other jobs may share them)."""
        shutil.rmtree(self.job_path(job_id, JOB_FILES[0]).parent, ignore_errors=True)

    def delete_upload(self, sha256: str) -> None:
        """Remove an upload that no job refers to any more."""
        self.upload_path(sha256).unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes, *, replace: bool = True) -> bool:
    """Write `data` to `path` through a private temporary file in the same folder; return whether it was written.

    The file appears whole or not at all. With `replace=False` an existing file is kept: of several
    processes racing to make it, the first wins and the others leave it be.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")  # mode 0600
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(temporary, path)
            return True
        try:
            # A hard link, unlike a rename, fails when the name exists.
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(temporary).unlink(missing_ok=True)
