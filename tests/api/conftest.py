"""An app on a real database (`database_url`: SQLite and Postgres, each test on an empty one) and a real SQLite broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from styleq.api import create_app
from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.settings import Settings
from styleq.shared.domain.params import WEIGHTS_FILES
from styleq.shared.service.keys import create_api_key
from tests.api.support import Keys

MAX_UPLOAD_BYTES = 64 * 1024


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings for one test: its own storage directory and SQLite-backed broker.

    Fair use stays at its defaults (per key: 300 requests a minute, 10 jobs queued or running), which
    no test here comes near; tests/api/test_api_limits.py sets small limits of its own.
    """
    return api_settings(tmp_path, database_url)


def api_settings(folder: Path, database_url: str, **overrides: Any) -> Settings:
    """The API tests' settings: everything in `folder` (storage, an SQLite-backed broker, pulled models) on `database_url`."""
    return Settings(
        data_dir=folder,
        database_url=database_url,
        broker_url=f"sqla+sqlite:///{folder / 'broker.db'}",
        storage_dir=folder / "storage",
        queue="styleq.test",
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_size=640,
        max_iterations=1000,
        model_dir=installed_models(folder / "models"),
        **overrides,
    )


def installed_models(model_dir: Path) -> Path:
    """A model directory where an operator has pulled the presets' weights (the API only looks for the files)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in ("vgg16-caffe", "vgg19"):
        (model_dir / WEIGHTS_FILES[name]).write_bytes(b"")
    return model_dir


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
    resources = app.extensions["styleq"]
    with session_scope(resources.session_factory) as session:
        made = {
            name: create_api_key(session, name, secret=resources.secret_key, is_admin=name == "admin") for name in ("alice", "bob", "admin")
        }
        ids = {name: key.id for name, (key, _) in made.items()}
    tokens = {name: token for name, (_, token) in made.items()}
    return Keys(tokens["alice"], tokens["bob"], tokens["admin"], ids)
