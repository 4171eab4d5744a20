"""The app-wide objects every view reaches: settings, the database, storage and the job queue; and one session per request."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from styleq.shared.adapters.settings import Settings
from styleq.shared.adapters.storage import Store
from styleq.shared.service.retention import StorageUsage

from .queue import JobQueue

EXTENSION = "styleq"


@dataclass
class Backends:
    """The settings of one app and the back ends it talks to, built by the factory and kept on `app.extensions`."""

    settings: Settings
    # Signs the session cookies and keys the stored hashes of API keys (see shared.adapters.secret_key).
    secret_key: str
    engine: Engine
    session_factory: sessionmaker[Session]
    storage: Store
    queue: JobQueue
    # The bytes each kind of file takes in storage (the operator view; /metrics), counted at most once a minute.
    storage_usage: StorageUsage

    def close(self) -> None:
        """Release the broker and database connections (for tests and shutdown)."""
        self.queue.close()
        self.engine.dispose()


def backends() -> Backends:
    """Return the current app's settings and back ends."""
    return current_app.extensions[EXTENSION]


def db_session() -> Session:
    """Return this request's session, opening it on first use."""
    if "db_session" not in g:
        g.db_session = backends().session_factory()
    return g.db_session


def close_session(_error: BaseException | None = None) -> None:
    """Close this request's session, if it opened one (uncommitted work is rolled back)."""
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
