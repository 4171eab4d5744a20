"""Images and saved states on disk: uploads by content hash, results, previews and states by job id.

Every path is built here from a hash or a job id that this module checks, so nothing a request says
can point outside the storage directory. Every write goes to a temporary file that is renamed into
place, so a reader never sees half a file and a crash never leaves one.

A job's folder is made when a worker claims it, and a worker's later writes never make it again: a
job deleted meanwhile leaves no files behind. Saved states carry their iteration in their name, and
a state older than one already there is never written, however late its writer wakes up.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_STATE = re.compile(r"^state-([0-9]{9})\.pt$")
# The result in each of its formats (shared/outputs.py FORMATS): a job has one of them.
RESULT_FILES = ("result.png", "result.jpg", "result.webp")
PREVIEW_FILE = "preview.jpg"
# The one unnumbered state, which versions before numbered states wrote.
LEGACY_STATE_FILE = "state.pt"
JOB_FILES = (*RESULT_FILES, PREVIEW_FILE, LEGACY_STATE_FILE)


@dataclass(frozen=True)
class StoredFile:
    """One file found in storage: what it is, whose (a job id or an upload's hash), where, its size and age."""

    kind: str  # "result", "preview", "state", "upload", or "other" (a temporary file, something unknown)
    owner: str  # the job id, or the upload's sha256; "" for other files
    path: Path
    size: int
    modified: float  # seconds since the epoch


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
        """Return where the job's file `name` (one of JOB_FILES, or a numbered state) lives."""
        if not _JOB_ID.match(job_id) or not (name in JOB_FILES or _STATE.match(name)):
            raise ValueError(f"no such job file: {job_id!r}/{name!r}")
        return self.root / "jobs" / job_id[:2] / job_id / name

    def job_dir(self, job_id: str) -> Path:
        """Return the folder of the job's files."""
        return self.job_path(job_id, PREVIEW_FILE).parent

    def make_job_dir(self, job_id: str) -> None:
        """Make the job's folder (a worker does, once its claim on the job is committed)."""
        self.job_dir(job_id).mkdir(parents=True, exist_ok=True)

    def save_state(self, job_id: str, iteration: int, data: bytes) -> bool:
        """Keep `data` as the job's saved state at `iteration`, unless a state as new is already there; return whether it was kept.

        Raises FileNotFoundError when the job's folder is gone (the job was deleted).
        """
        folder = self.job_dir(job_id)
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            # One writer at a time per job decides what is newest, across processes on this host (and NFS).
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            existing = self._states(folder)
            if existing and existing[-1][0] >= iteration:
                return False
            write_atomically(folder / f"state-{iteration:09d}.pt", data, create_parents=False)
            for _, older in existing:
                older.unlink(missing_ok=True)
            (folder / LEGACY_STATE_FILE).unlink(missing_ok=True)
            return True
        finally:
            os.close(descriptor)  # releases the lock

    def state_path(self, job_id: str) -> Path | None:
        """Return the job's newest saved state, or None."""
        folder = self.job_dir(job_id)
        states = self._states(folder)
        if states:
            return states[-1][1]
        legacy = folder / LEGACY_STATE_FILE
        return legacy if legacy.is_file() else None

    def delete_states(self, job_id: str) -> None:
        """Remove the job's saved states: a job that has ended will not resume."""
        folder = self.job_dir(job_id)
        for _, path in self._states(folder):
            path.unlink(missing_ok=True)
        (folder / LEGACY_STATE_FILE).unlink(missing_ok=True)

    @staticmethod
    def _states(folder: Path) -> list[tuple[int, Path]]:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        return sorted((int(match.group(1)), folder / name) for name in names if (match := _STATE.match(name)))

    def save_upload(self, data: bytes) -> str:
        """Store `data` once under its sha256 and return the hash."""
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.upload_path(sha256)
        if not path.is_file():
            write_atomically(path, data)
        return sha256

    def write_job_file(self, job_id: str, name: str, data: bytes, *, create: bool = True) -> Path:
        """Write one of the job's files atomically and return its path.

        With `create=False` the job's folder must exist (FileNotFoundError if the job was deleted).
        """
        path = self.job_path(job_id, name)
        write_atomically(path, data, create_parents=create)
        return path

    def delete_job_files(self, job_id: str) -> None:
        """Remove every file of the job (its uploads stay: other jobs may share them)."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def delete_upload(self, sha256: str) -> None:
        """Remove an upload that no job refers to any more."""
        self.upload_path(sha256).unlink(missing_ok=True)

    def walk(self) -> Iterator[StoredFile]:
        """Yield every file in storage, uploads then jobs' files; a file that vanishes meanwhile is left out."""
        for fan_out in _entries(self.root / "uploads"):
            for entry in _entries(Path(fan_out.path)):
                yield from _stored(entry, "upload" if _SHA256.match(entry.name) else "other", entry.name)
        for fan_out in _entries(self.root / "jobs"):
            for folder in _entries(Path(fan_out.path)):
                if not (_JOB_ID.match(folder.name) and folder.is_dir(follow_symlinks=False)):
                    yield from _stored(folder, "other", "")
                    continue
                for entry in _entries(Path(folder.path)):
                    yield from _stored(entry, _job_file_kind(entry.name), folder.name)


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _job_file_kind(name: str) -> str:
    if name in RESULT_FILES:
        return "result"
    if name == PREVIEW_FILE:
        return "preview"
    return "state" if name == LEGACY_STATE_FILE or _STATE.match(name) else "other"


def _stored(entry: os.DirEntry[str], kind: str, owner: str) -> Iterator[StoredFile]:
    try:
        stat = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return
    yield StoredFile(kind, owner if kind != "other" else "", Path(entry.path), stat.st_size, stat.st_mtime)


def write_atomically(path: Path, data: bytes, *, replace: bool = True, create_parents: bool = True) -> bool:
    """Write `data` to `path` through a private temporary file in the same folder; return whether it was written.

    The file appears whole or not at all. With `replace=False` an existing file is kept: of several
    processes racing to make it, the first wins and the others leave it be. With
    `create_parents=False` a missing folder is an error (FileNotFoundError), not made again.
    """
    if create_parents:
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
