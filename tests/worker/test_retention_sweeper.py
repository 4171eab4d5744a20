"""The workers' retention sweep: a thread beside the lease sweep that removes, at its own cadence, the files past their retention."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from styleq.shared.adapters.db import make_engine, make_session_factory, session_scope
from styleq.shared.adapters.models import Job, JobStatus
from styleq.shared.adapters.settings import Settings
from styleq.shared.adapters.storage import Storage
from styleq.shared.domain.params import resolve_params
from styleq.shared.service.jobs import create_job
from styleq.shared.service.keys import create_api_key
from styleq.worker.celery_app import RetentionSweeper


def test_the_retention_sweeper_removes_an_expired_result_and_marks_its_job(tmp_path, database_url):
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        storage_dir=tmp_path / "storage",
        sweep_every_seconds=0.05,
        retention_every_seconds=0.05,
    )
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        owner, _ = create_api_key(session, "alice", secret="sweeper-tests")
        job, _ = create_job(session, owner, resolve_params({"iterations": 100}), "a" * 64, "b" * 64)
        job.status, job.finished_at = JobStatus.SUCCEEDED, datetime.now(UTC) - timedelta(days=31)
        job_id = job.id
    result = Storage(settings.storage_path).write_job_file(job_id, "result.png", b"png")

    sweeper = RetentionSweeper(settings)
    sweeper.start()
    try:
        deadline = time.monotonic() + 20
        while result.exists():
            assert time.monotonic() < deadline, "the retention sweep never removed the result"
            time.sleep(0.05)
    finally:
        sweeper.stopped.set()
        sweeper.join()

    with session_scope(factory) as session:
        assert session.get(Job, job_id).result_expired_at is not None
    engine.dispose()
