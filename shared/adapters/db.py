"""The one place that opens database connections and scopes transactions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry


def make_engine(url: str) -> Engine:
    """Create an engine for `url`; SQLite gets WAL and a busy timeout so the API and workers can share it."""
    if not url.startswith("sqlite"):
        # pre_ping: a Postgres restart leaves dead pooled connections that must not fail the next request.
        return create_engine(url, pool_pre_ping=True, future=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, future=True)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return a session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def rowcount(result: Result[*tuple[Any, ...]]) -> int:
    """Return how many rows the UPDATE or DELETE that gave `result` matched."""
    # Session.execute is typed to return a Result whatever it runs; for an UPDATE or DELETE it is a CursorResult,
    # the Result that carries the count.
    return cast("CursorResult[*tuple[Any, ...]]", result).rowcount


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Open a session, commit when the block ends normally, roll back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
