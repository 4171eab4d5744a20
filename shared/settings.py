"""The one settings object, read from `STYLEQ_*` environment variables by entry points only."""

from __future__ import annotations

import socket
from pathlib import Path

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("styleq", appauthor=False))


class Settings(BaseSettings):
    """Configuration of every styleq process; each field is documented in the README's table."""

    model_config = SettingsConfigDict(env_prefix="STYLEQ_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    # Unset means `<data_dir>/models`, `<data_dir>/storage`, SQLite and the SQLite broker in
    # `<data_dir>`: one variable moves everything, and production sets the two URLs.
    model_dir: Path | None = None
    storage_dir: Path | None = None
    database_url: str | None = None
    broker_url: str | None = None
    # The name a worker process reports in the fleet and leases its jobs under (with its pid); unset
    # means the host's name. `styleq worker` sets it per GPU, e.g. `gpu0@host`.
    worker_name: str | None = None

    queue: str = "styleq.jobs"
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    # Jobs larger than this many output pixels or longer than this many iterations are refused.
    max_pixels: int = Field(default=1024 * 1024, ge=256)
    max_iterations: int = Field(default=5000, ge=1)
    # Fair use, per API key and across every API process on the database (admin keys are exempt; 0
    # switches a limit off): /v1 requests in a one-minute window, and jobs queued or running at once.
    # 300 a minute leaves room for a dashboard tab following a running job (it fetches the preview up to
    # about twice a second) beside a script that polls; 10 jobs fill a GPU worker's batch with room left.
    max_requests_per_minute: int = Field(default=300, ge=0)
    max_active_jobs: int = Field(default=10, ge=0)
    # A running job whose heartbeat is older than this belongs to a lost worker and is retried (the
    # heartbeat renews it every quarter of it, so a killed worker's job runs again within about 30 s + a sweep).
    lease_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # A queued job not picked up for this long is sent to the broker again (its message may be lost).
    requeue_after_seconds: float = Field(default=60.0, gt=0)
    sweep_every_seconds: float = Field(default=15.0, gt=0)
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
    # How long a worker holds its first job waiting for batch-mates to arrive; 0 takes only those already queued.
    batch_wait_seconds: float = Field(default=0.0, ge=0)
    # Signs the dashboard's session cookies and keys the stored hashes of API keys, so the API and
    # `styleq keys create` must share it; changing it invalidates every key. Unset means one generated
    # once and kept in `<data_dir>/secret-key`; set it when those processes do not share a data directory.
    secret_key: str | None = None
    # How many reverse proxies stand in front of the API, each appending to X-Forwarded-For/Proto/Host.
    # 0 believes none of those headers: any client could send them.
    trusted_proxies: int = Field(default=0, ge=0)

    @property
    def models_path(self) -> Path:
        """Return the directory that holds downloaded and converted weights."""
        return self.model_dir or self.data_dir / "models"

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
        }


def load_settings() -> Settings:
    """Read the settings from the environment."""
    return Settings()
