"""The API's side of the broker: a Celery app used only to send job ids, built on first use."""

from __future__ import annotations

import threading

from celery import Celery

from styleq.shared.adapters.settings import Settings
from styleq.shared.service.jobs import RUN_JOB_TASK


class JobQueue:
    """Send job ids to the workers' queue by task name, so the API never imports the worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._celery: Celery | None = None
        self._lock = threading.Lock()

    @property
    def celery(self) -> Celery:
        """Return the producer app, building it (without connecting) on first use."""
        with self._lock:
            if self._celery is None:
                self._celery = make_producer(self.settings)
            return self._celery

    def send(self, job_id: str) -> None:
        """Hand the job id to the broker; raises when the broker cannot take it."""
        self.celery.send_task(RUN_JOB_TASK, args=[job_id], queue=self.settings.queue)

    def close(self) -> None:
        """Close the producer's broker connections, if it ever opened any."""
        with self._lock:
            if self._celery is not None:
                self._celery.close()
                self._celery = None


def make_producer(settings: Settings) -> Celery:
    """Build a Celery app that only publishes to `settings.broker`."""
    app = Celery("styleq-api", broker=settings.broker, set_as_current=False)
    app.conf.update(settings.celery_config())
    app.conf.update(
        broker_connection_timeout=3,
        # A request waits for the broker at most about a second: a job that could not be sent stays
        # queued in the database, and the workers' sweeper sends it later.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
    )
    return app
