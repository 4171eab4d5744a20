"""One poller per API process for every open event stream: each job and each key read once a poll, whatever the streams' number.

Without it, every stream read its job, its checkpoints and its key twice a second in sessions of its
own: 500 streams made 3,000 queries a second. Once a poll, the hub reads every watched job together (a
few queries, whatever their number) and answers each distinct credential check, then wakes the streams,
which take what is new to them from that read.
It runs in a thread (a greenlet under gunicorn's gevent worker), started by the first stream and
ending with the last, so an idle process polls nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import Checkpoint, Job
from styleq.shared.service import jobs

from .payloads import checkpoint_payload, job_payload, job_payloads
from .stream_slots import StreamSlots

log = logging.getLogger(__name__)


@dataclass
class JobFeed:
    """What the hub last read of one job: its payload (None once deleted) and the checkpoints past `read_after`; `version` counts the reads that brought news."""

    job_id: str
    through: int
    streams: int = 0
    job: dict[str, Any] | None = None
    read_after: int = 0
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    version: int = 0
    read: bool = False
    # Notified (under the hub's lock) when `version` moves: only this job's streams wake.
    woken: threading.Condition = field(default_factory=threading.Condition)


def read_job(session: Session, job_id: str, after: int) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Return the job's payload (None once deleted) and every checkpoint past `after`.

    The job first: if it is finished, every checkpoint it wrote is committed and read below.
    """
    job = session.get(Job, job_id)
    if job is None:
        return None, []
    payload = job_payload(session, job)
    checkpoints: list[dict[str, Any]] = []
    while True:
        page = jobs.checkpoints_after(session, job_id, after)
        checkpoints += [checkpoint_payload(checkpoint) for checkpoint in page]
        if len(page) < jobs.CHECKPOINT_PAGE:
            return payload, checkpoints
        after = page[-1].iteration


def read_jobs(session: Session, afters: dict[str, int]) -> dict[str, tuple[dict[str, Any] | None, list[dict[str, Any]]]]:
    """Return, for each job id, what `read_job` returns for it past its `after`, in a few queries for any number of jobs.

    Read one at a time, 50 watched jobs were 150 queries a poll; under gevent each is a wait behind every
    other open request, so a poll (and the checkpoints it brings) took seconds and kept the database busy.
    """
    if not afters:
        return {}
    # The jobs first: a finished job's every checkpoint is committed before the read below.
    found = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(list(afters))))}
    present = [found[job_id] for job_id in afters if job_id in found]
    payloads = dict(zip((job.id for job in present), job_payloads(session, present)))
    news: dict[str, list[dict[str, Any]]] = {job.id: [] for job in present}
    if present:
        past_after = or_(*(and_(Checkpoint.job_id == job.id, Checkpoint.iteration > afters[job.id]) for job in present))
        for checkpoint in session.scalars(select(Checkpoint).where(past_after).order_by(Checkpoint.job_id, Checkpoint.iteration)):
            news[checkpoint.job_id].append(checkpoint_payload(checkpoint))
    return {job_id: (payloads[job_id], news[job_id]) if job_id in found else (None, []) for job_id in afters}


def let_others_run() -> None:
    """Let the process's other requests run now (under gevent, where the database calls never yield), else nothing."""
    # A poll of 50 jobs and 50 keys in one go, on SQLite, held a gevent process for a quarter of its time
    # in stretches that /healthz had to wait out (py-spy, 250 streams a process); between reads it need not.
    time.sleep(0)


class StreamHub:
    """The jobs and credentials this process's streams watch, read together every `poll_seconds`."""

    def __init__(self, session_factory: sessionmaker[Session], slots: StreamSlots, *, poll_seconds: float) -> None:
        self.session_factory = session_factory
        self.slots = slots
        self.poll_seconds = poll_seconds
        self.feeds: dict[str, JobFeed] = {}
        # Each distinct check (a key, or a dashboard session) with its streams' count and its last answer.
        self.checks: dict[Hashable, tuple[Callable[[Session], bool], int]] = {}
        self.authorised: dict[Hashable, bool] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.running = False

    @contextmanager
    def watch(self, job_id: str, through: int, check_id: Hashable, check: Callable[[Session], bool]) -> Iterator[JobFeed]:
        """Follow `job_id` (already read up to checkpoint `through`) and `check` for as long as the block runs."""
        with self.changed:
            feed = self.feeds.get(job_id)
            if feed is None:
                feed = self.feeds[job_id] = JobFeed(job_id, through=through, read_after=through, woken=threading.Condition(self.lock))
            feed.streams += 1
            self.checks[check_id] = (check, self.checks.get(check_id, (check, 0))[1] + 1)
            self.authorised.setdefault(check_id, True)
            if not self.running:
                self.running = True
                threading.Thread(target=self.run, name="styleq-stream-hub", daemon=True).start()
        try:
            yield feed
        finally:
            with self.changed:
                feed.streams -= 1
                if feed.streams == 0 and self.feeds.get(job_id) is feed:
                    del self.feeds[job_id]
                check, count = self.checks[check_id]
                if count <= 1:
                    del self.checks[check_id]
                    self.authorised.pop(check_id, None)
                else:
                    self.checks[check_id] = (check, count - 1)

    def wait(self, feed: JobFeed, seen: int, timeout: float) -> None:
        """Return once the hub has read `feed` again since version `seen`, or after `timeout` seconds."""
        with self.changed:
            feed.woken.wait_for(lambda: feed.version != seen, timeout)

    def run(self) -> None:
        """Poll every watched job and check until no stream is left."""
        renewed = time.monotonic()
        while True:
            time.sleep(self.poll_seconds)
            with self.changed:
                if not self.feeds:
                    self.running = False
                    return
                feeds = list(self.feeds.values())
                checks = dict(self.checks)
            try:
                self.poll(feeds, checks)
            except Exception:  # a database hiccup: the streams wait for the next poll, as a browser would
                log.warning("event streams: polling the database failed; trying again", exc_info=True)
            if time.monotonic() - renewed >= self.slots.renew_every_seconds:
                renewed = time.monotonic()
                try:
                    self.slots.renew()
                except Exception:
                    log.warning("event streams: renewing this process's stream slots failed", exc_info=True)

    def poll(self, feeds: list[JobFeed], checks: dict[Hashable, tuple[Callable[[Session], bool], int]]) -> None:
        """Answer each check, and read every feed's job and new checkpoints together, in one short session; wake the streams."""
        answers: dict[Hashable, bool] = {}
        with session_scope(self.session_factory) as session:
            for check_id, (check, _count) in checks.items():
                answers[check_id] = check(session)
                let_others_run()
            reads = read_jobs(session, {feed.job_id: feed.through for feed in feeds})
        with self.changed:
            # Only a feed with news (or every feed, when a check failed) wakes its streams: a poll that woke all
            # 500 streams of 50 mostly queued jobs twice a second kept a process's one thread busy for nothing.
            refused = any(not answer and self.authorised.get(check_id, True) for check_id, answer in answers.items())
            self.authorised.update(answers)
            for feed in feeds:
                job, checkpoints = reads[feed.job_id]
                if feed.read and job == feed.job and not checkpoints and not refused:
                    continue
                feed.read = True
                feed.job, feed.checkpoints = job, checkpoints
                feed.read_after = feed.through
                if feed.checkpoints:
                    feed.through = feed.checkpoints[-1]["iteration"]
                feed.version += 1
                feed.woken.notify_all()
