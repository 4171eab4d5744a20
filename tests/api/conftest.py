"""An app on a real database (SQLite and Postgres, each test on an empty one) and a real SQLite broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from api import create_app
from shared.db import make_engine, session_scope
from shared.keys import create_api_key
from shared.migrate import upgrade_database
from shared.settings import Settings
from tests.api.support import Keys
from tests.services import fresh_postgres_database

MAX_UPLOAD_BYTES = 64 * 1024
@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated Postgres database made for this test session and dropped after it."""
    with fresh_postgres_database() as url:
        upgrade_database(url)
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database: a new SQLite file, or the session's Postgres database emptied."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'styleq.db'}"
        upgrade_database(url)
        return url
    url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE checkpoints, jobs, api_keys, workers RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings for one test: its own storage directory and SQLite-backed broker."""
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        storage_dir=tmp_path / "storage",
        queue="styleq.test",
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_pixels=512 * 512,
        max_iterations=1000,
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    app.config.update(TESTING=True, EVENTS_POLL_SECONDS=0.02, EVENTS_KEEPALIVE_SECONDS=15.0, EVENTS_MAX_SECONDS=20.0)
    yield app
    app.extensions["styleq"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def keys(app: Flask) -> Keys:
    """Two clients and an admin, each with its own API key."""
    with session_scope(app.extensions["styleq"].session_factory) as session:
        made = {name: create_api_key(session, name, is_admin=name == "admin") for name in ("alice", "bob", "admin")}
        ids = {name: key.id for name, (key, _) in made.items()}
    tokens = {name: token for name, (_, token) in made.items()}
    return Keys(tokens["alice"], tokens["bob"], tokens["admin"], ids)
