"""`GET /metrics` in the Prometheus text format: the jobs as the database has them, and this API's requests.

Under gunicorn the API runs as several processes, each counting its own requests; prometheus_client's
multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set up by `api.gunicorn_config`) keeps those counts in
files that any process adds up when scraped. Everything about jobs is read from the database at scrape
time by `ServiceCollector`, so it is the same whichever process answers and matches the database
exactly. Workers serve their own figures on a port of their own (`worker.metrics`).
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import JobStatus
from styleq.shared.domain.errors import Unauthorized
from styleq.shared.service import stats
from styleq.shared.service.deliveries import delivery_counts
from styleq.shared.service.retention import StorageUsage

from .backends import backends
from .documented import described, error

bp = Blueprint("metrics", __name__)
log = logging.getLogger(__name__)
# Walking the storage directory costs a stat per file: each API process does it at most this often.
# Where the app keeps its collector (one per API process, so the storage count is cached per process).
COLLECTOR = "styleq.metrics"

# Not registered anywhere: in multiprocess mode they write to files, and the scrape reads those back.
REQUESTS = Counter("styleq_http_requests", "HTTP requests answered by the API.", ["method", "endpoint", "status"], registry=None)
REQUEST_SECONDS = Histogram(
    "styleq_http_request_duration_seconds",
    "Time to answer a request (an event stream: to its first byte).",
    ["endpoint"],
    registry=None,
)


class ServiceCollector(Collector):
    """Jobs by status, the queue, wait and run times, webhook deliveries and storage, as of the scrape."""

    def __init__(self, session_factory: sessionmaker[Session], storage_usage: StorageUsage) -> None:
        self.session_factory = session_factory
        self.storage_usage = storage_usage

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("styleq_database_up", "Whether the scrape could read the job database (the job figures are missing when 0).")
        try:
            families = list(self._database_families())
        except SQLAlchemyError:
            log.warning("metrics: the job database is unreachable", exc_info=True)
            families = []
        up.add_metric([], 1 if families else 0)
        yield up
        yield from families
        yield self._storage_family()

    def _database_families(self) -> Iterator[Metric]:
        with session_scope(self.session_factory) as session:
            by_status = stats.jobs_by_status(session)
            oldest_age = stats.queue_age_seconds(session)
            waits = stats.queue_wait_histogram(session)
            runs = stats.run_time_histograms(session)
            webhooks = delivery_counts(session)
        jobs = GaugeMetricFamily("styleq_jobs", "Jobs in the database, by status.", labels=["status"])
        for status, count in by_status.items():
            jobs.add_metric([status.value], count)
        yield jobs
        yield GaugeMetricFamily("styleq_queue_depth", "Jobs queued and not yet taken by a worker.", value=by_status[JobStatus.QUEUED])
        yield GaugeMetricFamily(
            "styleq_queue_oldest_job_age_seconds",
            "How long the oldest queued job has waited since it was submitted (0: none waits).",
            value=oldest_age,
        )
        wait = HistogramMetricFamily("styleq_job_queue_wait_seconds", "Time from submission to first start, of every job that has started.")
        wait.add_metric([], _buckets(waits), waits.total_seconds)
        yield wait
        run = HistogramMetricFamily(
            "styleq_job_run_seconds",
            "Time from first start to end, of every finished job that started, by how it ended.",
            labels=["status"],
        )
        for status, histogram in runs.items():
            run.add_metric([status.value], _buckets(histogram), histogram.total_seconds)
        yield run
        deliveries = GaugeMetricFamily(
            "styleq_webhook_deliveries", "Webhook deliveries recorded, by outcome (pending, delivered, failed).", labels=["outcome"]
        )
        for outcome, count in sorted(webhooks.items()):
            deliveries.add_metric([outcome], count)
        yield deliveries

    def _storage_family(self) -> Metric:
        family = GaugeMetricFamily(
            "styleq_storage_bytes",
            f"Bytes of files in the storage directory, by kind (counted at most every {self.storage_usage.max_age_seconds:.0f} s).",
            labels=["kind"],
        )
        for kind, size in self.storage_usage.get().items():
            family.add_metric([kind], size)
        return family


def _buckets(histogram: stats.DurationHistogram) -> list[tuple[str, float]]:
    return [*((repr(bound), count) for bound, count in histogram.buckets), ("+Inf", histogram.count)]


@bp.get("/metrics")
@described(
    {
        "summary": "Figures for Prometheus: jobs by status, the queue, wait and run times, storage, requests.",
        "description": "No API key; when STYLEQ_METRICS_TOKEN is set, `Authorization: Bearer <that token>` instead.",
        "security": [],
        "responses": {
            "200": {
                "description": "The Prometheus text format, version 0.0.4.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            "401": error("invalid_token: STYLEQ_METRICS_TOKEN is set and the request did not send it."),
        },
    }
)
def show_metrics() -> Response:
    """Send every figure in the Prometheus text format (with `Authorization: Bearer <STYLEQ_METRICS_TOKEN>` when that is set)."""
    token = backends().settings.metrics_token
    if token and not hmac.compare_digest(request.headers.get("Authorization", "").encode(), f"Bearer {token}".encode()):
        raise Unauthorized("/metrics needs the header 'Authorization: Bearer <STYLEQ_METRICS_TOKEN>'", code="invalid_token")
    registry = CollectorRegistry()
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        MultiProcessCollector(registry)  # every API process's requests, from their files
    else:
        registry.register(REQUESTS)  # one process (the Flask server, tests): its own counts
        registry.register(REQUEST_SECONDS)
    registry.register(current_app.extensions[COLLECTOR])
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def start_timer() -> None:
    """Note when the request began."""
    g.request_started = time.perf_counter()


def count_request(response: Response) -> Response:
    """Count the answered request and time it."""
    endpoint = request.url_rule.endpoint if request.url_rule is not None else "unmatched"
    REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
    if "request_started" in g:
        REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - g.request_started)
    return response


def init_app(app: Flask, session_factory: sessionmaker[Session], storage_usage: StorageUsage) -> None:
    """Serve `/metrics` and count every request the app answers."""
    app.extensions[COLLECTOR] = ServiceCollector(session_factory, storage_usage)
    app.before_request(start_timer)
    app.after_request(count_request)
    app.register_blueprint(bp)
