"""A worker's own figures (optimisation iterations, device memory, checkpoint writes), served on `STYLEQ_METRICS_PORT`.

The jobs run in the worker's pool process, but a pool process may be replaced, so the Celery main
process serves the figures: prometheus_client's multiprocess mode has the pool process write them to
files in a folder of this worker's own, which the main process reads at each scrape. That folder
must be in the environment before prometheus_client is first imported by either process (the library
picks its storage at import), so this module imports it only inside its functions.

Iterations are a counter, not a gauge of a rate: `rate(styleq_worker_iterations_total[1m])` is the
iterations per second, correct however often Prometheus scrapes and across a pool process's restart.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .liveness import process_alive

if TYPE_CHECKING:
    import torch  # the Celery main process, which serves the figures, never imports it

METRICS_FOLDER = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: a checkpoint's rows alone take milliseconds; with a preview and a saved state, an fsync or two more.
CHECKPOINT_WRITE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    """What a job runner records as it goes, labelled with its worker's name and device."""

    def __init__(self, worker: str, device: str) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.worker = worker
        self.device = device
        # registry=None: a scrape reads them from the multiprocess files, and tests make runners freely.
        self.iterations_family = Counter(
            "styleq_worker_iterations",
            "Optimisation iterations done, summed over the jobs of a batch.",
            ["worker", "device"],
            registry=None,
        )
        self.iterations = self.iterations_family.labels(worker, device)
        self.memory = Gauge(
            "styleq_worker_device_memory_bytes",
            "Memory in use on the worker's device: CUDA memory_allocated on a GPU (kind cuda_allocated), the process's RSS on a CPU (kind rss).",
            ["worker", "device", "kind"],
            registry=None,
            multiprocess_mode="livemostrecent",
        )
        self.checkpoint_writes = Histogram(
            "styleq_checkpoint_write_seconds",
            "Time to write a checkpoint: its rows in the database (with_state=false, in the job's loop), or a preview and a saved state "
            "encoded and stored (with_state=true, on a thread beside the loop).",
            ["worker", "with_state"],
            registry=None,
            buckets=CHECKPOINT_WRITE_BUCKETS,
        )
        # For a registry of one's own, where there are no multiprocess files to read (a test, a single process).
        self.collectors = (self.iterations_family, self.memory, self.checkpoint_writes)

    def count_iterations(self, iterations: int) -> None:
        """Count iterations the engine has done for one job since its last checkpoint."""
        if iterations > 0:
            self.iterations.inc(iterations)

    def record_checkpoint_write(self, seconds: float, *, with_state: bool, device: torch.device) -> None:
        """Count a written checkpoint and its write time, and note the device's memory in use now."""
        self.checkpoint_writes.labels(self.worker, "true" if with_state else "false").observe(seconds)
        kind, used = memory_in_use(device)
        if used is not None:
            self.memory.labels(self.worker, self.device, kind).set(used)


def memory_in_use(device: torch.device) -> tuple[str, int | None]:
    """Return what memory figure fits `device` and its value: CUDA's allocated bytes, or this process's RSS (None off Linux)."""
    if device.type == "cuda":
        import torch

        return "cuda_allocated", torch.cuda.memory_allocated(device)
    try:
        with open("/proc/self/statm") as statm:
            return "rss", int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return "rss", None


def serve_metrics(port: int, *, host: str = "127.0.0.1", tries: int = 100) -> tuple[str, int]:
    """Make this worker's metrics folder, name it in the environment and serve its figures on `host`:`port`, or the next
    free port above it (of `tries`); return the folder and the port.

    Call it in the Celery main process before its pool forks, and before anything imports prometheus_client.

    Raises:
        OSError: no port of those could be bound (the last port's error, or another error than "in use").
    """
    folder = tempfile.mkdtemp(prefix="styleq-worker-metrics-")
    os.environ[METRICS_FOLDER] = folder  # inherited by the pool process it forks
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(LiveProcessesCollector(folder))
    last = min(port + tries, 65536) - 1
    # Binding is the test: a port checked free and then bound could be taken in between by a worker starting beside this one.
    for candidate in range(port, last + 1):
        try:
            start_http_server(candidate, addr=host, registry=registry)
            return folder, candidate
        except OSError as error:
            if error.errno != errno.EADDRINUSE or candidate == last:
                remove_metrics_folder(folder)
                raise
    raise AssertionError("unreachable: the loop returns or raises")


def remove_metrics_folder(folder: str) -> None:
    """Remove a folder `serve_metrics` made."""
    shutil.rmtree(folder, ignore_errors=True)


class LiveProcessesCollector:
    """prometheus_client's multiprocess collector, first dropping the live gauges of pool processes that have died."""

    def __init__(self, folder: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.folder = folder
        self.files = MultiProcessCollector(None, folder)

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import mark_process_dead

        for path in glob.glob(os.path.join(self.folder, "gauge_live*_*.db")):
            pid = os.path.basename(path).removesuffix(".db").rpartition("_")[2]
            if pid.isdigit() and not process_alive(int(pid)):
                mark_process_dead(int(pid), self.folder)
        return self.files.collect()
