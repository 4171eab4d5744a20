"""The service layer on a real database (`database_url`: SQLite and Postgres) and a real store (`storage_url`: a folder and
SeaweedFS's S3), with no app or worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from styleq.shared.adapters.db import make_engine, make_session_factory, session_scope
from styleq.shared.adapters.models import ApiKey, Job
from styleq.shared.adapters.settings import Settings
from styleq.shared.adapters.storage import Store, open_storage
from styleq.shared.domain.params import resolve_params
from styleq.shared.service.jobs import create_job
from styleq.shared.service.keys import create_api_key

# The server secret the service-layer tests hash keys under.
SECRET_KEY = "service-layer-tests"


@pytest.fixture
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def storage(tmp_path: Path, storage_url: str | None) -> Store:
    """The test's store, as `open_storage` makes it from the settings: a folder of its own, or a key prefix of its own in SeaweedFS."""
    return open_storage(Settings(data_dir=tmp_path, storage_url=storage_url))


@pytest.fixture
def owners(factory) -> dict[str, ApiKey]:
    """Two clients and an admin."""
    with session_scope(factory) as session:
        return {name: create_api_key(session, name, secret=SECRET_KEY, is_admin=name == "admin")[0] for name in ("alice", "bob", "admin")}


def add_job(factory, owner: ApiKey, **values) -> str:
    """Queue a job for `owner` on two made-up upload hashes, with any column set to `values`; return its id."""
    with session_scope(factory) as session:
        job, _ = create_job(session, owner, resolve_params({"iterations": 100}), "a" * 64, "b" * 64)
        for name, value in values.items():
            setattr(job, name, value)
        return job.id


def load(factory, job_id: str) -> Job | None:
    with session_scope(factory) as session:
        return session.get(Job, job_id)
