"""Where uploads, results, previews and saved states live: the `Store` interface, and its directory backend.

A deployment keeps its files in one store, chosen by `Settings.storage_url` (`open_storage`): a local
directory (`Storage`, the embedded default, shared by every process on the host or mounted everywhere)
or S3-compatible object storage (`shared.adapters.object_storage.ObjectStorage`), which hosts that share no disk
reach alike. Both keep the same promises, which tests/shared/test_storage.py states once for both:

- uploads are stored once, by content hash; results, previews and states by job id, at names built here
  from a hash or an id that is checked, so nothing a request says can point outside the store;
- nothing half-written is ever visible (a temporary file renamed into place; an object PUT whole);
- a job's files exist only once a worker claimed it (`make_job_dir`), and a later write never brings a
  deleted job back;
- saved states carry their iteration in their name, and a state older than one already saved is never
  what a resumed run reads, however late its writer wakes up;
- a store that does not answer raises `StoreUnreachable` (an OSError), which the API answers as
  503 `storage_unavailable` and a worker rides out like a full disk.
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
from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .settings import Settings

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_STATE = re.compile(r"^state-([0-9]{9})\.pt$")
# The result in each of its formats (shared/adapters/outputs.py FORMATS): a job has one of them.
RESULT_FILES = ("result.png", "result.jpg", "result.webp")
PREVIEW_FILE = "preview.jpg"
# The one unnumbered state, which versions before numbered states wrote.
LEGACY_STATE_FILE = "state.pt"
JOB_FILES = (*RESULT_FILES, PREVIEW_FILE, LEGACY_STATE_FILE)


class StoreUnreachable(ConnectionError):
    """The store did not answer (an object store down or cut off): nothing was read or written; try again later."""


@dataclass(frozen=True)
class StoredFile:
    """One file found in storage: what it is, whose (a job id or an upload's hash), where, its size and age."""

    kind: str  # "result", "preview", "state", "upload", or "other" (a temporary file, something unknown)
    owner: str  # the job id, or the upload's sha256; "" for other files
    path: str  # where it is, as its store names it: a path on disk, or s3://bucket/key; what `remove_file` takes
    size: int
    modified: float  # seconds since the epoch


@dataclass
class OpenedFile:
    """One stored file opened for reading: its bytes as a stream (close it), size, last change and a tag of its version."""

    stream: IO[bytes]
    size: int
    modified: float  # seconds since the epoch
    etag: str
    # Its path on this host when the store is a directory: the API then sends it by path (byte ranges, sendfile).
    path: Path | None = None


class Store(Protocol):
    """What the API, the workers and `styleq gc` do with stored files; each backend keeps the module's promises."""

    location: str  # where the store is, for people: a directory, or s3://bucket/prefix

    def save_upload(self, data: bytes) -> str:
        """Store `data` once under its sha256 and return the hash."""
        ...

    def has_upload(self, sha256: str) -> bool:
        """Tell whether the upload with this hash is stored."""
        ...

    def read_upload(self, sha256: str) -> bytes:
        """Return the upload's bytes (FileNotFoundError when it is not stored)."""
        ...

    def open_upload(self, sha256: str) -> OpenedFile:
        """Open the upload for streaming (FileNotFoundError when it is not stored)."""
        ...

    def delete_upload(self, sha256: str) -> None:
        """Remove an upload that no job refers to any more."""
        ...

    def set_aside_upload(self, sha256: str) -> str | None:
        """Move the upload out of readers' sight and return where it went (None if it is not stored)."""
        ...

    def restore_upload(self, sha256: str, aside: str) -> None:
        """Put an upload `set_aside_upload` moved back in sight."""
        ...

    def make_job_dir(self, job_id: str) -> None:
        """Let the job's files be written (a worker does, once its claim on the job is committed)."""
        ...

    def write_job_file(self, job_id: str, name: str, data: bytes, *, create: bool = True) -> object:
        """Write one of the job's files whole; with `create=False` FileNotFoundError if the job was deleted."""
        ...

    def read_job_file(self, job_id: str, name: str) -> bytes:
        """Return one of the job's files (FileNotFoundError when it is not there)."""
        ...

    def open_job_file(self, job_id: str, name: str) -> OpenedFile:
        """Open one of the job's files for streaming (FileNotFoundError when it is not there)."""
        ...

    def has_job_file(self, job_id: str, name: str) -> bool:
        """Tell whether one of the job's files is there."""
        ...

    def save_state(self, job_id: str, iteration: int, data: bytes) -> bool:
        """Keep `data` as the job's state at `iteration` unless one as new is saved; return whether it was kept."""
        ...

    def load_state(self, job_id: str) -> bytes | None:
        """Return the job's newest saved state, or None."""
        ...

    def delete_states(self, job_id: str) -> None:
        """Remove the job's saved states: a job that has ended will not resume."""
        ...

    def delete_job_files(self, job_id: str) -> None:
        """Remove every file of the job, for good (its uploads stay: other jobs may share them)."""
        ...

    def walk(self) -> Iterator[StoredFile]:
        """Yield every file in the store, uploads then jobs' files."""
        ...

    def remove_file(self, path: str) -> None:
        """Remove a file `walk` found, by its `path` (FileNotFoundError when it is gone already)."""
        ...

    def presigned_url(self, job_id: str, name: str, *, seconds: int, media_type: str, download_name: str) -> str | None:
        """Return a URL that serves the job's file for `seconds` without the API, or None where the store has none."""
        ...


def open_storage(settings: Settings) -> Store:
    """Return the store `settings` name: S3-compatible object storage for an `s3://` storage URL, else the directory."""
    if settings.storage_url is not None:
        # Imported only here: boto3 loads for deployments that use object storage, never for the embedded default.
        from .object_storage import ObjectStorage

        return ObjectStorage.from_url(settings.storage_url)
    return Storage(settings.storage_path)


class Storage:
    """The storage directory of one deployment, shared by the API and every worker on its host (or a shared mount)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def upload_path(self, sha256: str) -> Path:
        """Return where the upload with this content hash lives."""
        return self.root / upload_key(sha256)

    def job_path(self, job_id: str, name: str) -> Path:
        """Return where the job's file `name` (one of JOB_FILES, or a numbered state) lives."""
        return self.root / job_key(job_id, name)

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
            write_atomically(folder / state_name(iteration), data, create_parents=False)
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

    def load_state(self, job_id: str) -> bytes | None:
        """Return the job's newest saved state, or None."""
        # A state replaced by a newer one between finding and reading it: read the newer one.
        for _ in range(3):
            path = self.state_path(job_id)
            if path is None:
                return None
            try:
                return path.read_bytes()
            except FileNotFoundError:
                continue
        return None

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

    def has_upload(self, sha256: str) -> bool:
        """Tell whether the upload with this hash is stored."""
        return self.upload_path(sha256).is_file()

    def read_upload(self, sha256: str) -> bytes:
        """Return the upload's bytes (FileNotFoundError when it is not stored)."""
        return self.upload_path(sha256).read_bytes()

    def open_upload(self, sha256: str) -> OpenedFile:
        """Open the upload for streaming (FileNotFoundError when it is not stored)."""
        return _open(self.upload_path(sha256))

    def set_aside_upload(self, sha256: str) -> str | None:
        """Rename the upload out of readers' sight and return its new path (None if it is not stored)."""
        path = self.upload_path(sha256)
        aside = path.with_name(f".{path.name}.{os.getpid()}.expiring")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        return str(aside)

    def restore_upload(self, sha256: str, aside: str) -> None:
        """Rename an upload `set_aside_upload` moved back into place."""
        os.rename(aside, self.upload_path(sha256))

    def read_job_file(self, job_id: str, name: str) -> bytes:
        """Return one of the job's files (FileNotFoundError when it is not there)."""
        return self.job_path(job_id, name).read_bytes()

    def open_job_file(self, job_id: str, name: str) -> OpenedFile:
        """Open one of the job's files for streaming (FileNotFoundError when it is not there)."""
        return _open(self.job_path(job_id, name))

    def has_job_file(self, job_id: str, name: str) -> bool:
        """Tell whether one of the job's files is there."""
        return self.job_path(job_id, name).is_file()

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

    def remove_file(self, path: str) -> None:
        """Remove a file `walk` found (FileNotFoundError when it is gone already); refuses a path outside the directory."""
        target = Path(path)
        if not target.is_relative_to(self.root):
            raise ValueError(f"{path!r} is not in the storage directory {self.root}")
        target.unlink()

    def presigned_url(self, job_id: str, name: str, *, seconds: int, media_type: str, download_name: str) -> str | None:
        """Return None: files in a directory are served by the API."""
        return None

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
                    yield from _stored(entry, job_file_kind(entry.name), folder.name)


def upload_key(sha256: str) -> str:
    """Return the upload's place in any store, relative to its root: `uploads/<first 2 hex digits>/<sha256>`."""
    if not _SHA256.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return f"uploads/{sha256[:2]}/{sha256}"


def job_key(job_id: str, name: str) -> str:
    """Return the place of the job's file `name` (one of JOB_FILES, or a numbered state) relative to a store's root."""
    if not _JOB_ID.match(job_id) or not (name in JOB_FILES or _STATE.match(name)):
        raise ValueError(f"no such job file: {job_id!r}/{name!r}")
    return f"jobs/{job_id[:2]}/{job_id}/{name}"


def state_name(iteration: int) -> str:
    """Return the name of the job's state saved at `iteration`: sorted by name, states sort by iteration."""
    return f"state-{iteration:09d}.pt"


def state_iteration(name: str) -> int | None:
    """Return the iteration a saved state's name carries, or None for any other name."""
    match = _STATE.match(name)
    return int(match.group(1)) if match else None


def is_upload_name(name: str) -> bool:
    """Tell whether `name` is an upload's (a sha256 hex digest)."""
    return bool(_SHA256.match(name))


def is_job_id(name: str) -> bool:
    """Tell whether `name` is a job id."""
    return bool(_JOB_ID.match(name))


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def job_file_kind(name: str) -> str:
    """Return what a job's file of this name is: "result", "preview", "state" or "other"."""
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
    yield StoredFile(kind, owner if kind != "other" else "", entry.path, stat.st_size, stat.st_mtime)


def _open(path: Path) -> OpenedFile:
    stream = path.open("rb")
    stat = os.fstat(stream.fileno())
    # The version tag werkzeug would give the path: its modification time and size.
    return OpenedFile(stream, stat.st_size, stat.st_mtime, f"{stat.st_mtime_ns:x}-{stat.st_size:x}", path)


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
