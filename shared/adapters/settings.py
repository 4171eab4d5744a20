"""The one settings object, read from `STYLEQ_*` environment variables by entry points only."""

from __future__ import annotations

import socket
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import Field, NonNegativeFloat, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("styleq", appauthor=False))


def _default_model_dir() -> Path:
    # Weights are a cache (fetched again from their pinned source, never written by a job): beside the
    # machine's other model caches, shared by every data directory, rather than in one deployment's data.
    return Path(platformdirs.user_cache_dir("styleq", appauthor=False)) / "models"


class Settings(BaseSettings):
    """Configuration of every styleq process; each field is documented in docs/OPERATIONS.md, "Every setting"."""

    model_config = SettingsConfigDict(env_prefix="STYLEQ_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    # Unset means `<data_dir>/storage`, SQLite and the SQLite broker in `<data_dir>`: one variable moves
    # everything a deployment owns, and production sets the two URLs. The weights are the user's cache.
    model_dir: Path = Field(default_factory=_default_model_dir)
    storage_dir: Path | None = None
    # S3-compatible object storage instead of the directory: `s3://bucket/prefix`, with the endpoint and
    # credentials boto3 reads (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, or a
    # profile or instance role). Hosts that share no disk (a worker per GPU host) all point here; a worker
    # then keeps only its weights cache on its own disk. The bucket must exist.
    storage_url: str | None = Field(default=None, pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
    # With object storage, GET /v1/jobs/{id}/result answers 307 with a presigned URL valid this many
    # seconds, so result bytes never pass through the API; 0 streams them through the API as from a directory.
    result_url_seconds: int = Field(default=0, ge=0, le=7 * 24 * 3600)
    database_url: str | None = None
    broker_url: str | None = None
    # The name a worker process reports in the fleet and leases its jobs under (with its pid); unset
    # means the host's name. `styleq worker` sets it per GPU, e.g. `gpu0@host`.
    worker_name: str | None = None

    queue: str = "styleq.jobs"
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    # Jobs whose output is longer than this on its long side, or longer than this many iterations, are refused
    # (4096 is also the most the parameters allow). Below it the memory of the workers' devices decides.
    max_size: int = Field(default=4096, ge=16, le=4096)
    max_iterations: int = Field(default=5000, ge=1)
    # The memory a job may use on a worker's device, in bytes. A worker reports it as its own (instead of its
    # CUDA device's total, or on a CPU the host's RAM); the API plans by it while no live worker has reported.
    # Unset there, and no worker heard from, the API refuses nothing for memory.
    device_memory_bytes: int | None = Field(default=None, ge=1)
    # Fair use, per API key and across every API process on the database (admin keys are exempt; 0
    # switches a limit off): /v1 requests in a one-minute window, and jobs queued or running at once.
    # 300 a minute leaves room for a dashboard tab following a running job (it fetches the preview up to
    # about twice a second) beside a script that polls; 10 jobs fill a GPU worker's batch with room left.
    max_requests_per_minute: int = Field(default=300, ge=0)
    max_active_jobs: int = Field(default=10, ge=0)
    # Event streams (GET /v1/jobs/{id}/events) one key may hold open at once, counted across the API
    # processes (in Redis when the broker is Redis, else per host); a dashboard tab holds one.
    max_streams_per_key: int = Field(default=20, ge=0)
    # An open stream's slot is renewed by its API process every quarter of this and freed this long
    # after its last renewal: the slots of a killed API process come free within it.
    stream_slot_ttl_seconds: float = Field(default=60.0, gt=0)
    # A running job whose heartbeat is older than this belongs to a lost worker and is retried (the
    # heartbeat renews it every quarter of it, so a killed worker's job runs again within about 30 s + a sweep).
    lease_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # A queued job not picked up for this long is sent to the broker again (its message may be lost).
    requeue_after_seconds: float = Field(default=60.0, gt=0)
    sweep_every_seconds: float = Field(default=15.0, gt=0)
    # The waits, in seconds, between a worker's tries of a database step (comma-separated, e.g. `1,2,4`); past
    # them (about a minute) the database counts as down: the run stops, and the sweep resumes the job when it is back.
    database_retry_delays: Annotated[tuple[NonNegativeFloat, ...], NoDecode] = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
    # The waits between tries of writing a result; past them the job goes back to the queue (a failed attempt).
    # A store that does not answer at all (an object store down) is waited for longer, `storage_retry_delays`.
    result_write_retry_delays: Annotated[tuple[NonNegativeFloat, ...], NoDecode] = (1.0, 2.0, 4.0, 8.0)
    # The waits between a worker's tries of reading or writing an object store that does not answer; past them
    # (about a minute) a job goes back to the queue, uncounted, until the store is back.
    storage_retry_delays: Annotated[tuple[NonNegativeFloat, ...], NoDecode] = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
    # The worker saves a preview and its resumable state every this many checkpoints, and no more often
    # than every `preview_min_seconds` (on a GPU a checkpoint can come every few milliseconds).
    preview_every: int = Field(default=5, ge=1)
    preview_min_seconds: float = Field(default=2.0, ge=0)
    # Checkpoints reach the database together, at most this long after they happen (always with a
    # saved state and at a job's end); 0 writes each one as it comes.
    checkpoint_flush_seconds: float = Field(default=1.0, ge=0)
    # The most jobs one worker optimises at once (fewer when the device's free memory says so).
    # Unset means per device: 8 on a GPU; 1 on a CPU, whose arithmetic grows with the batch, so
    # batching there gains little and makes every job wait for its batch-mates.
    batch_size: int | None = Field(default=None, ge=1)
    # The most pixels one pass of the network may take: a larger picture (or scale of one) is optimised in overlapping
    # tiles, alone. Unset means per device: what a GPU's free memory holds by the model of worker/engine/memory.py;
    # no limit on a CPU (its workers share the host's memory, which no one process can budget).
    max_pass_pixels: int | None = Field(default=None, ge=256 * 256)
    # The CPU threads each worker's network runs on (torch's intra-op threads). Unset means torch's default, every
    # core: right for one CPU worker per host, or a GPU worker. Several CPU workers on one host should share the
    # cores out (2 workers on 8 cores: 4 each): more threads than cores busy-wait against each other.
    worker_threads: int | None = Field(default=None, ge=1)
    # How long a worker holds its first job waiting for batch-mates to arrive; 0 takes only those already queued.
    batch_wait_seconds: float = Field(default=0.0, ge=0)
    # Signs the dashboard's session cookies and keys the stored hashes of API keys, so the API and
    # `styleq keys create` must share it; changing it invalidates every key. Unset means one generated
    # once and kept in `<data_dir>/secret-key`; set it when those processes do not share a data directory.
    secret_key: str | None = None
    # How many reverse proxies stand in front of the API, each appending to X-Forwarded-For/Proto/Host.
    # 0 believes none of those headers: any client could send them.
    trusted_proxies: int = Field(default=0, ge=0)
    # Log lines as JSON (one object a line, for a log collector) or as text; `auto` is JSON unless
    # standard error is a terminal. Lines about a job carry its `job_id` (and on a worker `worker`, `attempt`).
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # How many days files are kept, counted from the job's end (0 keeps them for ever); the workers'
    # retention sweep and `styleq gc` remove older ones. A result is what a client came for: a month
    # to fetch it. A preview only stands in for a result (the last picture of a failed or canceled
    # job): a week. A saved state is useless once its job ended (they are removed at the end; these
    # are leftovers of crashes) and the largest file of a job: 2 days. An upload goes when no job
    # newer than this uses it, so a job can run again for as long as its result is kept.
    keep_results_days: float = Field(default=30.0, ge=0)
    keep_previews_days: float = Field(default=7.0, ge=0)
    keep_states_days: float = Field(default=2.0, ge=0)
    keep_uploads_days: float = Field(default=30.0, ge=0)
    # How often each worker runs the retention sweep (it walks the storage directory, so not every sweep).
    retention_every_seconds: float = Field(default=3600.0, gt=0)

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _any_case(cls, value: object, info: Any) -> object:
        # `STYLEQ_LOG_LEVEL=info` means INFO, as in Celery's and gunicorn's own flags.
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()

    # When set, `GET /metrics` asks for `Authorization: Bearer <this>`; unset, it answers anyone who can
    # reach the API (it shows counts, worker and device names: no job, key or picture).
    metrics_token: str | None = None
    # The port on which each worker process serves its own metrics (iterations, device memory,
    # checkpoint writes); unset, workers serve none. `styleq worker` gives its N-th GPU this port + N.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # The address that port is bound on: the loopback by default, so a bare host shows its workers'
    # figures to no one else; a container sets 0.0.0.0 so Prometheus on the compose network reaches it.
    metrics_host: str = "127.0.0.1"
    # Webhooks: each delivery attempt may take this long (the spec recommends 15 to 30 s); failed ones
    # are tried again after `webhook_backoff_seconds`, doubling each time (at most an hour apart), until
    # `webhook_retry_for_seconds` after the event; then the delivery is recorded as failed.
    webhook_timeout_seconds: float = Field(default=15.0, gt=0)
    webhook_retry_for_seconds: float = Field(default=86400.0, ge=0)
    webhook_backoff_seconds: float = Field(default=5.0, gt=0)
    # A job's checkpoint events go out at most this often (each carries the latest checkpoint; those
    # between are folded into it), so a GPU's many checkpoints a second do not become as many requests.
    webhook_checkpoint_seconds: float = Field(default=10.0, ge=0)
    # Webhook URLs must resolve to public addresses (no loopback, private, link-local, multicast,
    # reserved or unspecified one), or else to one of these networks (comma-separated, e.g.
    # `10.1.2.0/24,127.0.0.1/32`); `webhook_allow_private` lifts the rule for every address.
    webhook_allowed_networks: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    webhook_allow_private: bool = False

    @field_validator("database_retry_delays", "result_write_retry_delays", "storage_retry_delays", mode="before")
    @classmethod
    def _split_delays(cls, value: Any) -> Any:
        # Comma-separated, as an operator would write them; empty means no retry at all.
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        # One comma-separated variable rather than a JSON list: what an operator would write.
        if isinstance(value, str):
            return tuple(ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip())
        return value

    @property
    def models_path(self) -> Path:
        """Return the directory that holds downloaded and converted weights."""
        return self.model_dir

    @property
    def storage_path(self) -> Path:
        """Return the directory under which every upload, result, preview and saved state lives."""
        return self.storage_dir or self.data_dir / "storage"

    @property
    def database(self) -> str:
        """Return the SQLAlchemy URL of the job database (SQLite in the data directory by default)."""
        return self.database_url or f"sqlite:///{self.data_dir / 'styleq.db'}"

    @property
    def broker(self) -> str:
        """Return the Celery broker URL (a SQLite-backed kombu transport in the data directory by default)."""
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def worker_node(self) -> str:
        """Return this worker's name in the fleet: `worker_name`, else the host's name."""
        return self.worker_name or socket.gethostname()

    @property
    def broker_is_embedded(self) -> bool:
        """Tell whether the broker is the embedded one (kombu's SQLAlchemy transport), not a server."""
        return self.broker.startswith(("sqla+", "sqlalchemy+"))

    @property
    def broker_sends_events(self) -> bool:
        """Tell whether Celery's monitoring events (Flower's view of tasks) can travel through the broker.

        kombu's SQLAlchemy transport (the embedded default) keeps exchange bindings in each process's
        memory and has no fanout: an event a worker publishes reaches no other process, so it is not sent.
        """
        return not self.broker_is_embedded

    def batch_limit(self, *, gpu: bool) -> int:
        """Return the most jobs one worker optimises at once: the setting, else 8 on a GPU and 1 on a CPU."""
        if self.batch_size is not None:
            return self.batch_size
        return 8 if gpu else 1

    def celery_config(self) -> dict[str, object]:
        """Return the Celery settings that the API's producer and the workers must agree on."""
        return {
            "task_default_queue": self.queue,
            "task_serializer": "json",
            "accept_content": ["json"],
            "task_ignore_result": True,
            "broker_connection_retry_on_startup": True,
            # Task events, so Flower shows every run_job task and its state (`task-sent` from the API too).
            "worker_send_task_events": self.broker_sends_events,
            "task_send_sent_event": self.broker_sends_events,
        }


def load_settings() -> Settings:
    """Read the settings from the environment."""
    return Settings()
