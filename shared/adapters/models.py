"""The database schema: jobs, their style pictures, loss checkpoints and webhook deliveries, API keys, their request counts and dashboard sessions (changed only through migrations/)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Enum, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def iso_timestamp(value: datetime | None) -> str | None:
    """Return `value` as ISO 8601 in UTC with a `Z`, or None."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on SQLite (which stores it naive) as on Postgres."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class JobStatus(enum.StrEnum):
    """Where a job stands: queued → running → succeeded | failed | canceled (running → queued on retry)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def finished(self) -> bool:
        """Tell whether the job has ended for good."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class KeyHashScheme(enum.StrEnum):
    """How an API key's stored hash was made."""

    # HMAC-SHA256 keyed by the server secret: a leaked database alone cannot even confirm a guessed key.
    HMAC_SHA256 = "hmac-sha256"
    # Plain SHA-256, as keys made before migration 0007 were stored; rewritten as HMAC at their next use.
    SHA256 = "sha256"


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    # Only a hash is kept: a leaked database does not leak usable keys.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # A row that does not say (one from before 0007) holds the legacy plain hash.
    hash_scheme: Mapped[KeyHashScheme] = mapped_column(
        Enum(KeyHashScheme, native_enum=False, length=16, values_callable=lambda schemes: [scheme.value for scheme in schemes]),
        default=KeyHashScheme.HMAC_SHA256,
        server_default=KeyHashScheme.SHA256.value,
    )
    prefix: Mapped[str] = mapped_column(String(16))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # The key's webhook signing secret is derived from the server secret and these (shared.service.webhooks):
    # rotating it counts the version up, and the previous one still signs for a while after.
    webhook_secret_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    webhook_secret_rotated_at: Mapped[datetime | None] = mapped_column(default=None)


class DashboardSession(Base):
    """One browser signed in to the dashboard: its signed cookie names the row, which must still be open."""

    __tablename__ = "dashboard_sessions"

    # Random and unguessable; the cookie that carries it is signed too.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set by signing out or revoking the key: a copy of the cookie is worthless from then on.
    ended_at: Mapped[datetime | None] = mapped_column(default=None)

    key: Mapped[ApiKey] = relationship()


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created", "owner_id", "created_at"),
        Index("ix_jobs_status_created", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    # Stored as its value in a VARCHAR(16), no database enum type: a new status needs no type migration.
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=16, values_callable=lambda statuses: [status.value for status in statuses]),
        default=JobStatus.QUEUED,
    )
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    content_sha256: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)

    iterations: Mapped[int] = mapped_column(Integer)
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    content_loss: Mapped[float | None] = mapped_column(Float, default=None)
    style_loss: Mapped[float | None] = mapped_column(Float, default=None)
    tv_loss: Mapped[float | None] = mapped_column(Float, default=None)
    total_loss: Mapped[float | None] = mapped_column(Float, default=None)
    elapsed_s: Mapped[float | None] = mapped_column(Float, default=None)
    has_preview: Mapped[bool] = mapped_column(Boolean, default=False)

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The iteration of the job's last saved state, the one its current attempt resumed from, and how
    # many attempts in a row ended (a lost worker) without saving a newer state: only those use up
    # `max_attempts`, so a job whose workers die for other reasons is never given up for it.
    saved_iteration: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    resumed_iteration: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    stalled_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # How many jobs the worker optimised together when it last started this one (1: alone), and the
    # id that batch's jobs share (None when alone).
    batch_size: Mapped[int | None] = mapped_column(Integer, default=None)
    batch_id: Mapped[str | None] = mapped_column(String(32), default=None)
    # The lease of a running job: the worker process holding it (`node/pid`, its own even when a
    # restarted worker reuses the node's name), the device it runs on, and when it last showed life.
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    gpu: Mapped[str | None] = mapped_column(String(200), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    # Where to POST the job's events, and which (WebhookEvent values); None: no webhook.
    webhook_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON, default=None)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the job was last handed to the broker: a queued job left waiting long after it is sent again.
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # When the retention sweep removed the result (`STYLEQ_KEEP_RESULTS_DAYS` after the job ended): the
    # row and its losses stay, and the API answers 410 Gone for the result.
    result_expired_at: Mapped[datetime | None] = mapped_column(default=None)

    checkpoints: Mapped[list[Checkpoint]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True, order_by="Checkpoint.iteration"
    )
    # Loaded with the job (one query for a whole page of jobs): every view of a job shows its styles.
    styles: Mapped[list[JobStyle]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="JobStyle.position", lazy="selectin"
    )

    @property
    def style_hashes(self) -> list[str]:
        """Return the hashes of the job's style uploads, in the order given (at least one)."""
        return [style.sha256 for style in self.styles]

    @validates("status")
    def _status_as_enum(self, _key: str, value: str) -> JobStatus:
        # A status given as its plain value ("queued") is still the enum on the object.
        return JobStatus(value)

    @property
    def progress(self) -> float:
        """Return how far the job has got, from 0 to 1 (1 once it has succeeded)."""
        if self.status is JobStatus.SUCCEEDED:
            return 1.0
        return min(1.0, self.iteration / self.iterations) if self.iterations else 0.0


class JobStyle(Base):
    """One of a job's style pictures: its upload's hash and its place among them (their blend weights are in the job's params)."""

    __tablename__ = "job_styles"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    # From 0, in the order the client gave them: `style_weights` and `init="style"` (the first) refer to it.
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Indexed: deleting a job asks whether any other job still reads each upload.
    sha256: Mapped[str] = mapped_column(String(64), index=True)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "iteration", name="uq_checkpoints_job_iteration"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    iteration: Mapped[int] = mapped_column(Integer)
    elapsed_s: Mapped[float] = mapped_column(Float)
    content: Mapped[float] = mapped_column(Float)
    style: Mapped[float] = mapped_column(Float)
    tv: Mapped[float] = mapped_column(Float)
    total: Mapped[float] = mapped_column(Float)
    # The fraction of the output size the picture had (coarse-to-fine); 1 for a job in one pass.
    scale: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="checkpoints")


class Worker(Base):
    """One worker process (one GPU), as it last reported itself."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    gpu: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    current_job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    jobs_done: Mapped[int] = mapped_column(Integer, default=0)
    # The memory of its device in bytes (a GPU's total, a CPU host's RAM, or STYLEQ_DEVICE_MEMORY_BYTES), which
    # the API plans by: a job that fits no live worker's device is refused at submit. None: not reported.
    device_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)


class RequestWindow(Base):
    """How many /v1 requests one API key made in one fixed window of time (the per-minute limit's counter)."""

    __tablename__ = "request_windows"

    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    requests: Mapped[int] = mapped_column(Integer)


class WebhookEvent(enum.StrEnum):
    """What a job's webhook can be told: it started running (each attempt), reached a checkpoint, or ended."""

    RUNNING = "running"
    CHECKPOINT = "checkpoint"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class DeliveryStatus(enum.StrEnum):
    """Where one webhook delivery stands: pending (due, or waiting to be tried again), delivered or failed for good."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(Base):
    """One event of a job on its way to the job's webhook (the outbox: written with the change it reports)."""

    __tablename__ = "webhook_deliveries"
    # The deliverers' question: what is pending and due, oldest first.
    __table_args__ = (Index("ix_webhook_deliveries_status_next_attempt", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    event: Mapped[WebhookEvent] = mapped_column(
        Enum(WebhookEvent, native_enum=False, length=16, values_callable=lambda events: [event.value for event in events])
    )
    # The `webhook-id` header: the same on every attempt, so a receiver can drop repeats.
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    # The JSON body exactly as signed and sent; a checkpoint delivery not yet sent is replaced by a later checkpoint's.
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[DeliveryStatus] = mapped_column(
        Enum(DeliveryStatus, native_enum=False, length=16, values_callable=lambda statuses: [status.value for status in statuses]),
        default=DeliveryStatus.PENDING,
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set while a deliverer sends it (until the attempt's timeout and a margin): no other takes it meanwhile,
    # and one that died mid-send leaves it to be taken again after that.
    claimed_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
