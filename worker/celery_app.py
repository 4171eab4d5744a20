"""The Celery app of a styleq worker: late acks, one job at a time, the sweeper that finds lost jobs,
the threads that deliver webhooks, and a shutdown that hands running jobs back.

Celery's warm shutdown (SIGTERM) waits for the running task to end, and a job runs for minutes. So
when it starts, the worker's main process passes SIGTERM on to its pool process, where, while a job
runs, it tells the runner to stop (`process.stop_on_sigterm`): each job saves its state at its next checkpoint, goes back to the queue and is
sent again, and the task returns, so the worker exits within a checkpoint's time and another worker
resumes the job at once.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
from contextlib import suppress
from typing import Any

from celery import Celery, signals
from celery.worker import state as worker_state

from styleq.shared.adapters.db import make_engine, make_session_factory, session_scope
from styleq.shared.adapters.logs import configure_logging
from styleq.shared.adapters.secret_key import load_secret_key
from styleq.shared.adapters.settings import Settings
from styleq.shared.adapters.storage import open_storage
from styleq.shared.service import fleet, jobs, leases
from styleq.shared.service.retention import RetentionPolicy, sweep_retention

from .devices import device_memory_bytes
from .liveness import dead_local_owners
from .webhooks import start_deliverers

log = logging.getLogger(__name__)
# The job id in the arguments of a `styleq.run_job` message, as Celery's own log lines show them.
_JOB_ID_ARGUMENT = re.compile(r"\b[0-9a-f]{32}\b")
# Celery's loggers of the lines about one task: received (in the worker), succeeded or failed (in the pool process).
_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def use_styleq_logging(settings: Settings) -> None:
    """Log through `shared.adapters.logs` in this worker process and its pool processes, every line naming the worker.

    A receiver of Celery's `setup_logging` signal makes Celery leave logging alone: it neither adds
    handlers of its own nor redirects standard output (see Celery's "Logging" guide).
    """

    def configure(**_: Any) -> None:
        configure_logging(settings, {"worker": settings.worker_node})
        for name in _TASK_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(existing, TaskLineJobIds) for existing in logger.filters):
                logger.addFilter(TaskLineJobIds())

    signals.setup_logging.connect(configure, weak=False)
    configure()


class TaskLineJobIds(logging.Filter):
    """Give Celery's own lines about a job's task (received, succeeded, failed) the job's id, its one argument.

    They are written outside the runner's `log_context`: before the task starts, and after it returns.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if isinstance(data, dict) and data.get("name") == jobs.RUN_JOB_TASK and not hasattr(record, "job_id"):
            match = _JOB_ID_ARGUMENT.search(str(data.get("args", "")))
            if match:
                record.job_id = match.group(0)
        return True


def make_celery(settings: Settings) -> Celery:
    """Build the worker's Celery app with the `styleq.run_job` task registered."""
    app = Celery("styleq", broker=settings.broker, set_as_current=False)
    app.conf.update(settings.celery_config())
    app.conf.update(
        # A job's message is acknowledged only when the task ends, and handed back if the worker
        # process dies; one message at a time, so a queued job never waits behind a busy worker.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_hijack_root_logger=False,
    )
    if settings.broker.startswith(("redis://", "rediss://")):
        # Redis re-delivers an unacknowledged message after this long; the job's lease, not this,
        # decides whether a second worker may run it, so a long job is never run twice. (kombu's
        # SQLite transport hands every option to create_engine, so it gets none.)
        app.conf.broker_transport_options = {"visibility_timeout": 6 * 3600}
    app.conf.styleq_settings = settings

    @app.task(name=jobs.RUN_JOB_TASK, bind=True)
    def run_job(task: Any, job_id: str) -> str:
        """Run one job by id (the message carries nothing else)."""
        from .process import job_runner, stop_on_sigterm  # torch is imported in the pool process, not at app build time

        def resend(handed_back: str) -> None:
            task.app.send_task(jobs.RUN_JOB_TASK, args=[handed_back], queue=settings.queue)

        with stop_on_sigterm():
            # The bare word: Celery's "succeeded in" line shows the task's result by its repr.
            return job_runner(task.app.conf.styleq_settings).run(job_id, resend=resend).value

    def warm_up_in_thread() -> None:
        from . import process  # torch is imported here, in the pool process's warm-up thread

        process.warm_up(settings)

    def warm_pool_process(**_: Any) -> None:
        # In a thread: Celery kills a pool process whose start takes over 4 s, and torch's import alone may.
        threading.Thread(target=warm_up_in_thread, name="styleq-warm-up", daemon=True).start()

    # Sent in each new pool process (after fork; never in the parent, which must not start CUDA).
    signals.worker_process_init.connect(warm_pool_process, weak=False, dispatch_uid="styleq-warm-pool-process")

    pool_owner: dict[str, Any] = {}

    @signals.worker_ready.connect(weak=False)
    def start_sweeper(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            pool_owner["consumer"] = sender
            Sweeper(app, settings).start()
            if RetentionPolicy.from_settings(settings).removes_anything:
                RetentionSweeper(settings).start()
            # In this main process, not the pool's: a slow receiver never holds up a job. They sign with
            # each key's secret, derived from the server secret, which the API and `styleq keys` share.
            start_deliverers(settings, load_secret_key(settings))

    @signals.worker_shutting_down.connect(weak=False)
    def hand_back_running_jobs(**_: Any) -> None:
        # Only a pool holding a job needs telling; an idle one stops with the pool. Signalled while it was still
        # starting, an idle pool process died of it, the pool started another mid-shutdown, and the worker hung
        # (a worker stopped within a second of "ready": tests/integration/test_launcher.py).
        if not (worker_state.active_requests or worker_state.reserved_requests):
            return
        consumer = pool_owner.get("consumer")
        for pid in _pool_pids(consumer):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    return app


def _pool_pids(consumer: Any) -> list[int]:
    """Return the pids of the worker's pool processes (none before the worker is ready)."""
    try:
        return [process.pid for process in consumer.pool._pool._pool]
    except AttributeError:
        return []


class Sweeper(threading.Thread):
    """Every few seconds, report this worker alive and send again the jobs of lost workers and lost messages."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        super().__init__(name="styleq-sweeper", daemon=True)
        self.app = app
        self.settings = settings
        self.stopped = threading.Event()

    def run(self) -> None:
        session_factory = make_session_factory(make_engine(self.settings.database))
        name = self.settings.worker_node
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        # The parent never touches CUDA; the pool process reports the device's name at its first job.
        gpu = f"GPU {visible}" if visible else "cpu"
        memory = device_memory_bytes(self.settings, visible)
        starting = True
        while True:
            try:
                with session_scope(session_factory) as session:
                    fleet.report_worker(
                        session,
                        name,
                        host=socket.gethostname(),
                        gpu=gpu,
                        pid=os.getpid(),
                        starting=starting,
                        device_memory_bytes=memory,
                    )
                starting = False
                sweep_once(self.app, self.settings, session_factory)
            except Exception:  # the database or broker may be down for a while; try again next round
                log.warning("sweep failed", exc_info=True)
            if self.stopped.wait(self.settings.sweep_every_seconds):
                return


def sweep_once(app: Celery, settings: Settings, session_factory: Any) -> list[str]:
    """Requeue lost jobs in the database, then send each to the broker (until it refuses one); return their ids.

    A job held by a dead process on this host (a worker killed whole) is lost at once, not only when its lease goes stale.
    """
    host = socket.gethostname()
    with session_scope(session_factory) as session:
        result = leases.sweep(
            session,
            lease_seconds=settings.lease_seconds,
            requeue_after_seconds=settings.requeue_after_seconds,
            max_attempts=settings.max_attempts,
            dead_owners=dead_local_owners(leases.local_lease_owners(session, host), host),
        )
    if result.ended:
        storage = open_storage(settings)
        for job_id in result.ended:
            storage.delete_states(job_id)  # ended for good: they will not resume
    job_ids = result.to_send

    def send(job_id: str) -> None:
        app.send_task(jobs.RUN_JOB_TASK, args=[job_id], queue=settings.queue)

    for job_id in job_ids:
        with session_scope(session_factory) as session:
            if not jobs.enqueue_job(session, send, job_id):
                break  # the broker is down: the next round tries again
        log.info("sent job %s to the broker again (its worker or its message was lost)", job_id, extra={"job_id": job_id})
    return job_ids


class RetentionSweeper(threading.Thread):
    """Every `retention_every_seconds`, remove the results, previews, states and uploads past their retention."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="styleq-retention", daemon=True)
        self.settings = settings
        self.stopped = threading.Event()

    def run(self) -> None:
        engine = make_engine(self.settings.database)
        session_factory = make_session_factory(engine)
        storage = open_storage(self.settings)
        policy = RetentionPolicy.from_settings(self.settings)
        # The first pass waits a sweep's time, so that a worker starts taking jobs first.
        wait = self.settings.sweep_every_seconds
        try:
            while not self.stopped.wait(wait):
                wait = self.settings.retention_every_seconds
                try:
                    removed = sweep_retention(session_factory, storage, policy)
                except Exception:  # the database or storage may be unavailable for a while; try again next round
                    log.warning("retention sweep failed", exc_info=True)
                    continue
                if removed:
                    log.info("retention sweep removed %d files, %d bytes", len(removed), sum(removal.size for removal in removed))
        finally:
            engine.dispose()
