"""`styleq worker`: one Celery worker process per GPU, each pinned to its GPU with concurrency 1."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kombu import Connection, Queue
from sqlalchemy.exc import IntegrityError

from styleq.shared.adapters.logs import uses_json
from styleq.shared.adapters.settings import Settings

from .celery_app import make_celery, use_styleq_logging
from .metrics import METRICS_FOLDER, remove_metrics_folder, serve_metrics

log = logging.getLogger(__name__)
# The lock files that keep this process's worker name its own on this host, held open for its life.
_held_names: list[int] = []


class NoSuchGpu(ValueError):
    """`--gpus` names a GPU that nvidia-smi does not list on this machine."""


def visible_gpus(spec: str) -> list[str]:
    """Turn `--gpus` (`all`, `none`, or `0,1`) into GPU indices that nvidia-smi lists here, asking it, never CUDA, in this parent.

    Raises:
        NoSuchGpu: an index that is not on this machine (a worker on it would run on the CPU under a GPU's name).
        ValueError: a spec that is none of those forms.
    """
    if spec == "none":
        return []
    indices = None
    if spec != "all":
        indices = [part.strip() for part in spec.split(",") if part.strip()]
        if not indices or not all(index.isdigit() for index in indices):
            raise ValueError(f"--gpus takes all, none, or indices like 0,1; got {spec!r}")
    listed = listed_gpus()
    if indices is None:
        return listed
    missing = [index for index in indices if index not in listed]
    if missing and not listed:
        raise NoSuchGpu(f"--gpus {spec}: nvidia-smi lists no GPU on this machine; --gpus none runs a CPU worker")
    if missing:
        raise NoSuchGpu(f"--gpus {spec}: no GPU {', '.join(missing)} on this machine; nvidia-smi lists {', '.join(listed)}")
    return indices


def listed_gpus() -> list[str]:
    """Return the indices of the GPUs nvidia-smi lists, none where it is missing or fails."""
    try:
        listing = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in listing.stdout.splitlines() if line.strip().isdigit()] if listing.returncode == 0 else []


def node_name(gpu: str | None) -> str:
    """Name a worker by GPU and host, e.g. `gpu1@host` or `cpu@host`."""
    return f"{'cpu' if gpu is None else 'gpu' + gpu}@{socket.gethostname()}"


def reserve_name(name: str, lock_dir: Path | None = None, *, fleet: str = "") -> str:
    """Take `name` for this process, or `name` with `-2`, `-3`... before its `@host` when another live process on this host has it.

    Two workers on one host with one name would be one row in the fleet view, and each would
    overwrite the other's report. A lock file per name, held while the process lives, decides;
    the kernel releases it however the process ends. Names are taken per `fleet` (the database the
    workers report to): workers of two services on one host may share a name.
    """
    base, at, host = name.partition("@")
    folder = lock_dir or _lock_folder("worker-names") / _digest(fleet)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(1, 1000):
        candidate = f"{base if index == 1 else f'{base}-{index}'}{at}{host}"
        descriptor = os.open(folder / f"{candidate.replace('/', '_')}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue
        _held_names.append(descriptor)
        return candidate
    raise RuntimeError(f"a thousand workers named {name} run on this host already")


def _lock_folder(purpose: str) -> Path:
    """Return this user's folder of lock files for `purpose` on this host.

    One folder per user: a folder another user made (mode 0755) would refuse this user's lock files.
    """
    return Path(tempfile.gettempdir()) / f"styleq-{purpose}-{os.getuid()}"


def _digest(text: str) -> str:
    """Name a lock file or folder for `text` (a database or broker URL) without writing the URL itself."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def limit_cpu_threads(settings: Settings) -> None:
    """Give the pool processes `settings.worker_threads` CPU threads, if set, through the variables torch reads at import.

    This process never imports torch; its pool processes do, after fork, and OpenMP and MKL read these then, for
    every thread. `torch.set_num_threads` would not do: called from the pool process's warm-up thread, it holds for
    that thread alone, not for the one that runs the jobs.
    """
    if settings.worker_threads is not None:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(settings.worker_threads)


def run_worker(settings: Settings, name: str, loglevel: str | None = None) -> None:
    """Run one Celery worker in this process, under a name no other worker on this host has, until it is told to stop.

    `loglevel` overrides `settings.log_level`.
    """
    reserved = reserve_name(name, fleet=settings.database)
    settings = settings.model_copy(update={"worker_name": reserved, **({"log_level": loglevel.upper()} if loglevel else {})})
    use_styleq_logging(settings)
    limit_cpu_threads(settings)
    if reserved != name:
        log.warning("another worker on this host is named %s; this one is %s", name, reserved)
    # Before the app is built and the pool forks: the pool process records into the folder this makes.
    metrics_folder = None
    if settings.metrics_port is not None:
        try:
            metrics_folder, port = serve_metrics(settings.metrics_port, host=settings.metrics_host)
        except OSError as error:
            # One line (SystemExit prints it), from `styleq worker` and from `python -m styleq.worker` alike.
            raise SystemExit(f"styleq worker {reserved}: cannot serve metrics on port {settings.metrics_port} or above: {error}") from None
        if port != settings.metrics_port:
            # As the name took a suffix: a second worker on this host still runs, and says where to scrape it.
            log.warning(
                "metrics port %d is in use (another worker on this host?); %s serves its metrics on port %d",
                settings.metrics_port,
                reserved,
                port,
            )
    if settings.broker_is_embedded:
        declare_queue(settings)
    if metrics_folder is None:
        os.environ.pop(METRICS_FOLDER, None)  # a folder named for the API is not this worker's: count in memory, unread
    app = make_celery(settings)
    # Gossip and mingle broadcast to every worker; the database already coordinates them, and the
    # serverless broker does not fan out across processes. (Task events for Flower: see celery_config.)
    # Celery's banner is text: not among JSON lines.
    try:
        app.worker_main(
            [
                *(["--quiet"] if uses_json(settings) else []),
                "worker",
                "--hostname",
                reserved,
                "--queues",
                settings.queue,
                "--concurrency",
                "1",
                "--pool",
                "prefork",
                "--loglevel",
                settings.log_level,
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        if metrics_folder is not None:
            remove_metrics_folder(metrics_folder)


def declare_queue(settings: Settings, attempts: int = 3) -> None:
    """Create the job queue, once, before a worker consumes from it.

    On the embedded broker, workers started together each insert the queue's row. kombu's lock against that is
    per process: the insert that loses fails with an IntegrityError that Celery calls unrecoverable, taking its
    worker down, and one that finds the file locked is rolled back without a word. So the workers of one
    embedded broker on this host declare it one at a time (a lock file named for the broker), and a declaration
    that loses to another process (the API publishing) tries again and finds the row.
    """
    # A bare connection, not a Celery app: building one in the worker's process would connect its signal handlers twice.
    with _one_at_a_time(settings.broker) if settings.broker_is_embedded else contextlib.nullcontext():
        for attempt in range(1, attempts + 1):
            try:
                with Connection(settings.broker) as connection:
                    connection.ensure_connection(max_retries=3)
                    Queue(settings.queue).bind(connection.default_channel).declare()
                return
            except IntegrityError:  # another process created the queue between kombu's look and its insert
                if attempt == attempts:
                    log.warning("could not declare the queue %s before starting the worker", settings.queue, exc_info=True)
            except Exception:  # the workers retry on their own; this only spares them a race
                log.warning("could not declare the queue %s before starting the worker", settings.queue, exc_info=True)
                return


@contextlib.contextmanager
def _one_at_a_time(broker: str) -> Iterator[None]:
    """Hold a lock file named for `broker`, shared by every process of this user on this host."""
    folder = _lock_folder("broker-locks")
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / f"{_digest(broker)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def launch(settings: Settings, gpus: list[str], loglevel: str | None = None) -> int:
    """Start a worker per GPU (or one CPU worker) and wait; Ctrl-C or SIGTERM stops them all."""
    if len(gpus) <= 1:
        if gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
        run_worker(settings, node_name(gpus[0] if gpus else None), loglevel)
        return 0
    # Each worker declares the job queue itself as it starts (run_worker), one at a time on the embedded broker.
    children = []
    for index, gpu in enumerate(gpus):
        environment = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
        if settings.metrics_port is not None:
            environment["STYLEQ_METRICS_PORT"] = str(settings.metrics_port + index)  # a port each, on one host
        command = [sys.executable, "-m", "styleq.worker", "--name", node_name(gpu), *(["--loglevel", loglevel] if loglevel else [])]
        children.append(subprocess.Popen(command, env=environment))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(child.wait() for child in children)
