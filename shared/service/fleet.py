"""The worker fleet as the database knows it: each worker process reports itself and its current job."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ..adapters.models import Worker, utcnow


def report_worker(
    session: Session,
    name: str,
    *,
    host: str,
    gpu: str,
    pid: int,
    starting: bool = False,
    device_memory_bytes: int | None = None,
) -> None:
    """Record that worker `name` is alive, with its device's memory (and, when starting, reset its counters)."""
    worker = session.get(Worker, name)
    if worker is None:
        session.add(Worker(name=name, host=host, gpu=gpu, pid=pid, device_memory_bytes=device_memory_bytes))
        return
    worker.heartbeat_at = utcnow()
    worker.host, worker.pid = host, pid
    if device_memory_bytes is not None:
        worker.device_memory_bytes = device_memory_bytes
    if starting:
        worker.started_at, worker.current_job_id, worker.jobs_done, worker.gpu = utcnow(), None, 0, gpu
        worker.device_memory_bytes = device_memory_bytes


def worker_took_job(session: Session, name: str, job_id: str | None, *, gpu: str | None = None) -> None:
    """Record the job the worker is running now (None when idle); a device name learnt after fork may come along."""
    values: dict[str, object] = {"current_job_id": job_id, "heartbeat_at": utcnow()}
    if gpu is not None:
        values["gpu"] = gpu
    session.execute(update(Worker).where(Worker.name == name).values(**values))


def worker_finished_job(session: Session, name: str, count: int = 1) -> None:
    """Count `count` more jobs done by the worker (a batch's), which is idle again."""
    session.execute(
        update(Worker).where(Worker.name == name).values(current_job_id=None, jobs_done=Worker.jobs_done + count, heartbeat_at=utcnow())
    )


def list_workers(session: Session, *, seen_within_seconds: float = 24 * 3600) -> Sequence[Worker]:
    """Return the workers heard from recently, most recent first."""
    since = utcnow() - timedelta(seconds=seen_within_seconds)
    return session.scalars(select(Worker).where(Worker.heartbeat_at >= since).order_by(Worker.heartbeat_at.desc())).all()


def largest_device_memory(session: Session, *, live_within_seconds: float) -> int | None:
    """Return the most device memory any worker heard from within `live_within_seconds` has reported; None if none has."""
    since = utcnow() - timedelta(seconds=live_within_seconds)
    return session.scalar(select(func.max(Worker.device_memory_bytes)).where(Worker.heartbeat_at >= since))
