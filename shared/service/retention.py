"""How long files are kept: which results, previews, saved states and uploads have outlived their
retention, removing them, and how much storage each kind takes.

Nothing a live job needs is ever removed: only files of jobs that ended (or whose row is gone) go,
never a job's folder, and an upload goes only when no queued or running job uses it and no job that
does ended within its retention. A removed result keeps its job's row, marked `result_expired_at`
(the API then answers 410 Gone, as it does for a removed preview or upload). The workers run `sweep_retention` every `retention_every_seconds`;
`styleq gc` runs `find_expired` and `remove_expired` by hand.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from ..adapters.db import session_scope
from ..adapters.models import Job, JobStatus, JobStyle, utcnow
from ..adapters.settings import Settings
from ..adapters.storage import Store, StoredFile

log = logging.getLogger(__name__)
# The kinds `storage_usage` counts, in the order they are reported.
USAGE_KINDS = ("uploads", "results", "previews", "states", "other")
# An upload no job uses yet may belong to a submission still on its way to the database.
UNUSED_UPLOAD_GRACE = timedelta(hours=1)
# How many job ids or hashes one query asks about.
QUERY_BATCH = 500
LIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED = tuple(status for status in JobStatus if status.finished)


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind of file is kept (after its job ended; an upload, after the last job using it); None keeps it for ever."""

    results: timedelta | None
    previews: timedelta | None
    states: timedelta | None
    uploads: timedelta | None

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        """Return the policy the `keep_*_days` settings give (0 days keeps for ever)."""

        def days(value: float) -> timedelta | None:
            return timedelta(days=value) if value > 0 else None

        return cls(
            results=days(settings.keep_results_days),
            previews=days(settings.keep_previews_days),
            states=days(settings.keep_states_days),
            uploads=days(settings.keep_uploads_days),
        )

    @classmethod
    def uniform(cls, age: timedelta) -> RetentionPolicy:
        """Return a policy that keeps every kind for `age` (`styleq gc --older-than`)."""
        return cls(results=age, previews=age, states=age, uploads=age)

    @property
    def removes_anything(self) -> bool:
        """Tell whether some kind of file is not kept for ever."""
        return any(age is not None for age in (self.results, self.previews, self.states, self.uploads))

    def keeps(self, kind: str) -> timedelta | None:
        """Return how long files of `kind` (result, preview, state, upload) are kept."""
        return {"result": self.results, "preview": self.previews, "state": self.states, "upload": self.uploads}[kind]


@dataclass(frozen=True)
class Removal:
    """A file past its retention: its kind, whose it is (a job id or an upload's hash), where, and its size."""

    kind: str
    owner: str
    path: str
    size: int


@dataclass(frozen=True)
class _JobEnd:
    status: JobStatus
    ended_at: datetime | None  # None while the job is live


def find_expired(session: Session, storage: Store, policy: RetentionPolicy, *, now: datetime | None = None) -> list[Removal]:
    """Return the files past their retention, uploads first, each kind in order of owner and path (nothing is removed)."""
    now = now or utcnow()
    files = [file for file in storage.walk() if file.kind != "other" and policy.keeps(file.kind) is not None]
    job_files = [file for file in files if file.kind != "upload"]
    uploads = [file for file in files if file.kind == "upload"]
    ends = _job_ends(session, {file.owner for file in job_files})
    expired = [file for file in job_files if _job_file_expired(file, ends.get(file.owner), policy, now)]
    newest = _newest_uses(session, {file.owner for file in uploads})
    expired += [file for file in uploads if _upload_expired(file, newest.get(file.owner, _NO_USE), policy, now)]
    order = {"upload": 0, "result": 1, "preview": 2, "state": 3}
    expired.sort(key=lambda file: (order[file.kind], file.owner, file.path))
    return [Removal(file.kind, file.owner, file.path, file.size) for file in expired]


def _job_file_expired(file: StoredFile, end: _JobEnd | None, policy: RetentionPolicy, now: datetime) -> bool:
    keep = policy.keeps(file.kind)
    assert keep is not None
    if end is None:
        # No row: the job was deleted (its files are left over); judged by the file's own age.
        return datetime.fromtimestamp(file.modified, now.tzinfo) < now - keep
    return end.ended_at is not None and end.ended_at < now - keep


def _upload_expired(file: StoredFile, newest: _UploadUse, policy: RetentionPolicy, now: datetime) -> bool:
    keep = policy.uploads
    assert keep is not None
    if newest.live:
        return False
    if newest.last is None:
        # No job uses it: judged by the file's age, and never before a submission could have committed its job.
        return datetime.fromtimestamp(file.modified, now.tzinfo) < now - max(keep, UNUSED_UPLOAD_GRACE)
    return newest.last < now - keep


def _job_ends(session: Session, job_ids: Iterable[str]) -> dict[str, _JobEnd]:
    """Return the status of each job that exists among `job_ids` and, if it ended, when."""
    ends = {}
    for batch in _batches(sorted(job_ids)):
        rows = session.execute(select(Job.id, Job.status, Job.finished_at, Job.updated_at).where(Job.id.in_(batch)))
        for job_id, status, finished_at, updated_at in rows:
            status = JobStatus(status)
            ends[job_id] = _JobEnd(status, (finished_at or updated_at) if status.finished else None)
    return ends


@dataclass(frozen=True)
class _UploadUse:
    live: bool  # a queued or running job uses it
    last: datetime | None  # the latest end (or creation) of a job that uses it; None when none does


_NO_USE = _UploadUse(False, None)


def _newest_uses(session: Session, hashes: Iterable[str]) -> dict[str, _UploadUse]:
    """Return, for each upload among `hashes` that a job uses, whether a live job does and when the last one ended."""
    uses: dict[str, _UploadUse] = {}
    for batch in _batches(sorted(hashes)):
        # A content upload is named by its job; a style upload by one of the job's `job_styles` rows (a blend has several).
        as_content = select(Job.content_sha256, Job.status, Job.created_at, Job.finished_at).where(Job.content_sha256.in_(batch))
        as_style = (
            select(JobStyle.sha256, Job.status, Job.created_at, Job.finished_at)
            .join(Job, Job.id == JobStyle.job_id)
            .where(JobStyle.sha256.in_(batch))
        )
        for query in (as_content, as_style):
            for sha, status, created_at, finished_at in session.execute(query):
                seen = uses.get(sha, _NO_USE)
                moment = finished_at or created_at
                uses[sha] = _UploadUse(
                    seen.live or JobStatus(status) in LIVE,
                    moment if seen.last is None or moment > seen.last else seen.last,
                )
    return uses


def _batches(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), QUERY_BATCH):
        yield items[start : start + QUERY_BATCH]


def remove_expired(
    session_factory: sessionmaker[Session],
    storage: Store,
    removals: Sequence[Removal],
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
) -> list[Removal]:
    """Remove the files `find_expired` listed; return those removed (an upload a job took up again meanwhile stays).

    A result's job is marked `result_expired_at` before its file goes, so the API never says
    "succeeded but missing"; a removed preview clears `has_preview`.
    """
    now = now or utcnow()
    results = sorted({removal.owner for removal in removals if removal.kind == "result"})
    previews = sorted({removal.owner for removal in removals if removal.kind == "preview"})
    with session_scope(session_factory) as session:
        for batch in _batches(results):
            session.execute(update(Job).where(Job.id.in_(batch), Job.result_expired_at.is_(None)).values(result_expired_at=now))
    removed = []
    for removal in removals:
        if removal.kind == "upload":
            if not _remove_upload(session_factory, storage, removal, policy, now):
                continue
        else:
            try:
                storage.remove_file(removal.path)
            except FileNotFoundError:
                removal = replace(removal, size=0)  # gone already (another worker's sweep)
            except OSError:  # storage refusing one file must not stop the others; the next sweep tries again
                log.warning("could not remove %s", removal.path, exc_info=True)
                continue
        removed.append(removal)
        log.info("removed %s %s (%d bytes) past its retention", removal.kind, removal.path, removal.size, extra=_owner_field(removal))
    with session_scope(session_factory) as session:
        for batch in _batches(previews):
            session.execute(update(Job).where(Job.id.in_(batch), Job.status.in_(FINISHED)).values(has_preview=False))
    return removed


def _owner_field(removal: Removal) -> dict[str, Any]:
    return {"sha256": removal.owner} if removal.kind == "upload" else {"job_id": removal.owner}


def _remove_upload(
    session_factory: sessionmaker[Session], storage: Store, removal: Removal, policy: RetentionPolicy, now: datetime
) -> bool:
    """Remove an upload unless a job took it up since it was judged; return whether it was removed.

    A submission that finds its picture already stored keeps the file as it is, and writes it again
    after its commit (`shared.service.jobs.submit_job`). So the upload is first moved aside, then judged
    again in a new transaction: a job committed before that is seen and the file goes back; one
    committed after it writes the file anew itself.
    """
    try:
        aside = storage.set_aside_upload(removal.owner)
    except OSError:
        log.warning("could not remove %s", removal.path, exc_info=True)
        return False
    if aside is None:
        return False  # removed meanwhile (by another sweep, or a job's delete)
    keep = policy.uploads
    try:
        with session_scope(session_factory) as session:
            use = _newest_uses(session, [removal.owner]).get(removal.owner, _NO_USE)
        # Unused still: it was judged by its age already; used: by the last job's end, as before.
        still_expired = keep is not None and not use.live and (use.last is None or use.last < now - keep)
    except BaseException:
        storage.restore_upload(removal.owner, aside)
        raise
    if not still_expired:
        storage.restore_upload(removal.owner, aside)
        return False
    with contextlib.suppress(FileNotFoundError):
        storage.remove_file(aside)
    return True


def sweep_retention(session_factory: sessionmaker[Session], storage: Store, policy: RetentionPolicy) -> list[Removal]:
    """Remove every file past its retention now; return what was removed."""
    now = utcnow()
    with session_scope(session_factory) as session:
        removals = find_expired(session, storage, policy, now=now)
    return remove_expired(session_factory, storage, removals, policy, now=now)


def storage_usage(storage: Store) -> dict[str, int]:
    """Return the bytes each kind of file takes in storage: uploads, results, previews, states and other (temporary files)."""
    usage = dict.fromkeys(USAGE_KINDS, 0)
    for file in storage.walk():
        usage[file.kind + "s" if file.kind != "other" else "other"] += file.size
    return usage


class StorageUsage:
    """`storage_usage`, walked at most once every `max_age_seconds`: for pages polled every few seconds and metrics scrapes."""

    def __init__(self, storage: Store, max_age_seconds: float = 60.0) -> None:
        self.storage = storage
        self.max_age_seconds = max_age_seconds
        self._lock = threading.Lock()
        self._usage: dict[str, int] | None = None
        self._counted_at = -float("inf")

    def get(self) -> dict[str, int]:
        """Return the bytes each kind takes, counted at most `max_age_seconds` ago."""
        with self._lock:
            if self._usage is None or time.monotonic() - self._counted_at >= self.max_age_seconds:
                self._usage = storage_usage(self.storage)
                self._counted_at = time.monotonic()
            return dict(self._usage)
