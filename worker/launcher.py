"""`styleq worker`: one Celery worker process per GPU, each pinned to its GPU with concurrency 1."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys

from kombu import Queue

from shared.settings import Settings

from .celery_app import make_celery

log = logging.getLogger(__name__)


def visible_gpus(spec: str) -> list[str]:
    """Turn `--gpus` (`all`, `none`, or `0,1`) into GPU indices; `all` asks nvidia-smi, never CUDA, in this parent."""
    if spec == "none":
        return []
    if spec != "all":
        indices = [part.strip() for part in spec.split(",") if part.strip()]
        if not indices or not all(index.isdigit() for index in indices):
            raise ValueError(f"--gpus takes all, none, or indices like 0,1; got {spec!r}")
        return indices
    try:
        listing = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in listing.stdout.splitlines() if line.strip().isdigit()] if listing.returncode == 0 else []


def node_name(gpu: str | None) -> str:
    """Name a worker by GPU and host, e.g. `gpu1@host` or `cpu@host`."""
    return f"{'cpu' if gpu is None else 'gpu' + gpu}@{socket.gethostname()}"


def run_worker(settings: Settings, name: str, loglevel: str = "INFO") -> None:
    """Run one Celery worker in this process until it is told to stop."""
    app = make_celery(settings.model_copy(update={"worker_name": name}))
    # Gossip, mingle and events broadcast to every worker; the database already coordinates them,
    # and the serverless broker does not fan out across processes.
    app.worker_main([
        "worker", "--hostname", name, "--queues", settings.queue, "--concurrency", "1", "--pool", "prefork",
        "--loglevel", loglevel, "--without-gossip", "--without-mingle",
    ])


def declare_queue(settings: Settings) -> None:
    """Create the job queue once, before the workers start.

    Workers started together would each create it, and in the embedded (SQLite) broker the second
    insert of the same queue fails and takes its worker down.
    """
    app = make_celery(settings)
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=3)
            Queue(settings.queue).bind(connection.default_channel).declare()
    except Exception:  # the workers retry on their own; this only spares them a race
        log.warning("could not declare the queue %s before starting the workers", settings.queue, exc_info=True)


def launch(settings: Settings, gpus: list[str], loglevel: str = "INFO") -> int:
    """Start a worker per GPU (or one CPU worker) and wait; Ctrl-C or SIGTERM stops them all."""
    if len(gpus) <= 1:
        if gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
        run_worker(settings, node_name(gpus[0] if gpus else None), loglevel)
        return 0
    declare_queue(settings)
    children = []
    for gpu in gpus:
        environment = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
        command = [sys.executable, "-m", "worker", "--name", node_name(gpu), "--loglevel", loglevel]
        children.append(subprocess.Popen(command, env=environment))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(child.wait() for child in children)
