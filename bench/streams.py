"""Hundreds of open event streams against a real deployment: do other requests stay fast, do checkpoints keep flowing?

Starts `styleq up` (the embedded SQLite default) or the compose file's API command with a CPU worker
on Postgres + Redis, on loopback; makes KEYS non-admin keys with STYLEQ_MAX_STREAMS_PER_KEY set to
STREAMS_PER_KEY; one key's job runs (tiny, many iterations), every other key's job waits queued. Then
each key opens STREAMS_PER_KEY streams to its job and holds them for HOLD seconds while a probe asks
/healthz, the sign-in page and /v1/jobs (another key) in turn; finally each of three keys asks for one
stream more, which must be refused with 429. Prints the figures as one JSON object.

    .venv/bin/python -m bench.streams --backend embedded
    .venv/bin/python -m bench.streams --backend postgres+redis [--keys 50 --streams-per-key 10 --hold 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "images"
# Tiny and long: checkpoints every few iterations for longer than any hold.
RUNNING_JOB = {"size": [32, 48], "iterations": 5000, "checkpoint_every": 2}
WAITING_JOB = {"size": [32, 48], "iterations": 10}


@dataclass
class Deployment:
    """A running API (and worker) with the URL it answers at and its settings' environment."""

    url: str
    environment: dict[str, str]
    processes: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def output(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-4000:] for path in self.logs)


@dataclass
class StreamResult:
    """What one held stream saw."""

    status: int = 0
    checkpoints: list[float] = field(default_factory=list)
    ended_early: bool = False
    retry_after: str | None = None
    body: str = ""
    # Seconds from asking to the status line, and what went wrong when no status line came.
    answered_after: float | None = None
    error: str | None = None
    # Seconds from the connection's opening to its request written (this client's own lag under load).
    sent_after_connect: float | None = None


def raise_file_limit(wanted: int) -> int:
    """Raise this process's (and its children's) open-file limit toward `wanted`; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(deployment: Deployment, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in deployment.processes):
            break
        try:
            if requests.get(f"{deployment.url}/healthz", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the deployment did not start:\n{deployment.output()}")


def _spawn(command: list[str], environment: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:  # the process has its own copy of the descriptor
        return subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def compose_api_command(port: int) -> list[str]:
    """Return docker-compose.yml's API command, bound to loopback on `port`."""
    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]["command"]
    command = [f"--bind=127.0.0.1:{port}" if part.startswith("--bind") else part for part in command]
    assert command[0] == "gunicorn"
    return [sys.executable, "-m", "gunicorn", *command[1:]]


@contextmanager
def deployment(
    backend: str, root: Path, environment: dict[str, str], database_url: str | None = None, broker_url: str | None = None
) -> Iterator[Deployment]:
    """Run `styleq up` (embedded) or the compose API command and a CPU worker (postgres+redis); stop them after."""
    port = free_port()
    environment = {**environment, "STYLEQ_DATA_DIR": str(root / "data"), "STYLEQ_QUEUE": f"styleq-bench-{uuid.uuid4().hex[:8]}"}
    for name in ("STYLEQ_DATABASE_URL", "STYLEQ_BROKER_URL"):
        environment.pop(name, None)
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    if backend == "embedded":
        logs.append(root / "up.log")
        processes.append(_spawn([sys.executable, "-m", "styleq.cli", "up", "--port", str(port), "--gpus", "none"], environment, logs[-1]))
    else:
        assert database_url and broker_url
        environment.update(STYLEQ_DATABASE_URL=database_url, STYLEQ_BROKER_URL=broker_url, STYLEQ_SECRET_KEY="styleq-bench-secret")
        from styleq.shared.adapters.migrate import upgrade_database

        upgrade_database(database_url)
        logs += [root / "api.log", root / "worker.log"]
        processes.append(_spawn(compose_api_command(port), environment, logs[0]))
        processes.append(_spawn([sys.executable, "-m", "styleq.cli", "worker", "--gpus", "none"], environment, logs[1]))
    running = Deployment(f"http://127.0.0.1:{port}", environment, processes, logs)
    try:
        _wait_healthy(running)
        yield running
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):  # it ended already
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def make_keys(environment: dict[str, str], count: int) -> tuple[list[str], str]:
    """Create `count` non-admin keys and one admin key in the deployment's database; return their secrets."""
    from styleq.cli.service import make_key_with_webhook_secret
    from styleq.shared.adapters.settings import Settings

    settings = Settings(**_settings_fields(environment))
    keys = [make_key_with_webhook_secret(settings, f"bench-{index}")[0] for index in range(count)]
    return keys, make_key_with_webhook_secret(settings, "bench-probe", admin=True)[0]


def _settings_fields(environment: dict[str, str]) -> dict[str, Any]:
    fields = {"data_dir": environment["STYLEQ_DATA_DIR"]}
    for name in ("STYLEQ_DATABASE_URL", "STYLEQ_BROKER_URL", "STYLEQ_SECRET_KEY"):
        if name in environment:
            fields[name.removeprefix("STYLEQ_").lower()] = environment[name]
    return fields


def submit(url: str, key: str, params: dict[str, Any]) -> str:
    """Submit the seed pair with `params`; return the job's id."""
    with (IMAGES / "rainier.jpg").open("rb") as content, (IMAGES / "autumn-oak.jpg").open("rb") as style:
        response = requests.post(
            f"{url}/v1/jobs",
            headers={"Authorization": f"Bearer {key}"},
            files={"content": content, "style": style},
            data={"params": json.dumps(params)},
            timeout=60,
        )
    response.raise_for_status()
    return response.json()["id"]


def wait_running(url: str, key: str, job_id: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
        if job["status"] == "running":
            return
        if job["status"] in ("failed", "canceled", "succeeded"):
            raise RuntimeError(f"the running job ended: {job}")
        time.sleep(0.3)
    raise RuntimeError("the job never started running")


async def open_stream(url: str, key: str, job_id: str, result: StreamResult, stop: asyncio.Event) -> None:
    """Hold one event stream until `stop`, noting when each checkpoint arrives."""
    host, port = url.removeprefix("http://").split(":")
    asked = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
    except OSError as error:
        result.error = f"connect: {error!r}"
        return
    connected = time.monotonic()
    try:
        writer.write(
            (
                f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        result.sent_after_connect = time.monotonic() - connected
        status_line = await reader.readline()
        if not status_line:
            result.error = "the server closed the connection before a status line"
            return
        result.status = int(status_line.split()[1])
        result.answered_after = time.monotonic() - asked
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if result.status != 200:
            result.retry_after = headers.get("retry-after")
            result.body = (await reader.read(int(headers.get("content-length", "0")) or 4096)).decode(errors="replace")
            return
        reading = asyncio.ensure_future(reader.readline())
        stopping = asyncio.ensure_future(stop.wait())
        while True:
            done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                reading.cancel()
                return
            line = reading.result()
            if not line:
                result.ended_early = True
                stopping.cancel()
                return
            # Chunked framing lines pass by; the event lines are what counts.
            if line.startswith(b"event: checkpoint"):
                result.checkpoints.append(time.monotonic())
            reading = asyncio.ensure_future(reader.readline())
    except OSError as error:
        result.error = f"{'read' if result.status else 'before a status line'}: {error!r}"
    finally:
        writer.close()


def probe_once(url: str, admin_key: str, index: int) -> tuple[str, float, int, float, str]:
    """Ask one of /healthz, the sign-in page and /v1/jobs; return what, how long it took, its status, when it was asked and any error."""
    path, headers = [("/healthz", {}), ("/signin", {}), ("/v1/jobs", {"Authorization": f"Bearer {admin_key}"})][index % 3]
    started = time.monotonic()
    error = ""
    try:
        status = requests.get(f"{url}{path}", headers=headers, timeout=10).status_code
    except requests.RequestException as failure:
        status, error = 0, type(failure).__name__
    return path, time.monotonic() - started, status, started, error


async def probe(url: str, admin_key: str, stop: asyncio.Event, samples: list[tuple[str, float, int, float, str]]) -> None:
    index = 0
    while not stop.is_set():
        samples.append(await asyncio.to_thread(probe_once, url, admin_key, index))
        index += 1
        await asyncio.sleep(0.1)


async def hold(url: str, keys: list[str], admin_key: str, job_ids: list[str], streams_per_key: int, hold_seconds: float) -> dict[str, Any]:
    """Open every stream, hold them `hold_seconds` while probing, then ask for one stream too many on three keys."""
    stop, probe_stop = asyncio.Event(), asyncio.Event()
    samples: list[tuple[str, float, int, float, str]] = []
    prober = asyncio.ensure_future(probe(url, admin_key, probe_stop, samples))
    results = [[StreamResult() for _ in range(streams_per_key)] for _ in keys]
    opened = time.monotonic()
    tasks = [
        asyncio.ensure_future(open_stream(url, key, job_id, result, stop))
        for key, job_id, key_results in zip(keys, job_ids, results)
        for result in key_results
    ]
    # Opened: every stream answered its status line (the held ones then wait for `stop`).
    while any(result.status == 0 and result.error is None for key_results in results for result in key_results):
        if time.monotonic() - opened > 120:
            break
        await asyncio.sleep(0.2)
    open_seconds = time.monotonic() - opened
    held_from = time.monotonic()
    await asyncio.sleep(hold_seconds)
    refused = [StreamResult() for _ in range(3)]
    await asyncio.gather(*(open_stream(url, keys[index], job_ids[index], refused[index], stop) for index in range(3)))
    held_until = time.monotonic()
    stop.set()
    probe_stop.set()
    await asyncio.gather(*tasks, prober, return_exceptions=True)

    flat = [result for key_results in results for result in key_results]
    running = results[0]
    latencies = [sample[1] for sample in samples]
    answered = [result.answered_after for result in flat if result.answered_after is not None]
    lags = [result.sent_after_connect for result in flat if result.sent_after_connect is not None]
    failed_lags = [result.sent_after_connect for result in flat if result.error and result.sent_after_connect is not None]
    # Each slow or failed probe: what, how long, its status, when (seconds after the streams began to open), any error.
    late = [
        (path, round(seconds, 3), status, round(at - opened, 1), error)
        for path, seconds, status, at, error in samples
        if seconds >= 1.0 or status != 200
    ]
    return {
        "streams": len(flat),
        "keys": len(keys),
        "streams_answered_200": sum(result.status == 200 for result in flat),
        "streams_ended_early": sum(result.ended_early for result in flat),
        "streams_failed": dict(Counter(result.error for result in flat if result.error)),
        "seconds_to_status_line_max": round(max(answered), 2) if answered else None,
        "client_seconds_from_connect_to_request_max": round(max(lags), 2) if lags else None,
        "client_seconds_from_connect_to_request_max_of_failed": round(max(failed_lags), 2) if failed_lags else None,
        "seconds_to_open_all": round(open_seconds, 2),
        "held_seconds": round(held_until - held_from, 1),
        "probe_requests": len(samples),
        "probe_seconds_median": round(statistics.median(latencies), 4) if latencies else None,
        "probe_seconds_max": round(max(latencies), 4) if latencies else None,
        "probe_slow_or_failed": late,
        "running_job_streams": len(running),
        "checkpoints_per_running_stream_min": min(len(result.checkpoints) for result in running),
        "checkpoints_per_running_stream_during_hold_min": min(
            sum(held_from <= at <= held_until for at in result.checkpoints) for result in running
        ),
        "last_checkpoint_age_at_end_max_s": round(
            max(held_until - (result.checkpoints[-1] if result.checkpoints else opened) for result in running), 2
        ),
        "beyond_cap": [{"status": result.status, "retry_after": result.retry_after, "body": result.body} for result in refused],
    }


def run(
    backend: str,
    root: Path,
    *,
    keys: int,
    streams_per_key: int,
    hold_seconds: float,
    model_dir: str | None = None,
    database_url: str | None = None,
    broker_url: str | None = None,
) -> dict[str, Any]:
    """Start the deployment, hold keys x streams_per_key streams, and return the figures."""
    raise_file_limit(4 * keys * streams_per_key + 1024)
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "STYLEQ_MAX_STREAMS_PER_KEY": str(streams_per_key),
        "STYLEQ_MAX_REQUESTS_PER_MINUTE": "0",
        "STYLEQ_LOG_LEVEL": "WARNING",
    }
    if model_dir:
        environment["STYLEQ_MODEL_DIR"] = model_dir
    with deployment(backend, root, environment, database_url, broker_url) as running:
        secrets, admin_key = make_keys(running.environment, keys)
        job_ids = [submit(running.url, secrets[0], RUNNING_JOB)]
        wait_running(running.url, secrets[0], job_ids[0])
        job_ids += [submit(running.url, key, WAITING_JOB) for key in secrets[1:]]
        figures = asyncio.run(hold(running.url, secrets, admin_key, job_ids, streams_per_key, hold_seconds))
        return {"backend": backend, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("embedded", "postgres+redis"), default="embedded")
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--streams-per-key", type=int, default=10)
    parser.add_argument("--hold", type=float, default=30.0, help="seconds to hold every stream open")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="the broker of the postgres+redis run")
    arguments = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="styleq-bench-streams-"))
    try:
        options = {"keys": arguments.keys, "streams_per_key": arguments.streams_per_key, "hold_seconds": arguments.hold}
        if arguments.backend == "embedded":
            figures = run("embedded", root, **options)
        else:
            # The tests' harness makes the database (tests/services.py, which the other deployment benchmarks use too).
            from tests.services import fresh_postgres_database

            with fresh_postgres_database() as database_url:
                figures = run("postgres+redis", root, database_url=database_url, broker_url=arguments.redis, **options)
        print(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
