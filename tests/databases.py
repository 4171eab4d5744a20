"""Cheap empty databases for tests: a copy of one migrated SQLite file, and one Postgres database emptied in place."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import text

from styleq.shared.adapters.db import make_engine
from styleq.shared.adapters.migrate import upgrade_database


def migrate_template(path: Path) -> Path:
    """Migrate a new SQLite database at `path` to copy from, and return `path`."""
    upgrade_database(f"sqlite:///{path}")
    # The migrations' engine is disposed, so SQLite has folded its write-ahead log into the file: the file alone is the database.
    assert not path.with_name(f"{path.name}-wal").exists(), f"{path} still has a write-ahead log"
    return path


def copy_database(template: Path, path: Path) -> str:
    """Copy the migrated SQLite `template` to `path` and return its URL (a millisecond, where migrating takes a third of a second or more)."""
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def empty_postgres_database(url: str) -> list[str]:
    """Delete every row of every table the migrations made (all but Alembic's own), restart their ids from 1, and return the tables' names."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            # Read from the database, not from a list here, so that the tables a later migration adds are emptied too.
            tables = list(
                connection.scalars(
                    text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'alembic_version' ORDER BY tablename"
                    )
                )
            )
            names = ", ".join(f'"{table}"' for table in tables)
            # A connection a previous test left inside a transaction would block TRUNCATE for ever: fail with a lock timeout instead.
            connection.execute(text("SET LOCAL lock_timeout = '20s'"))
            connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()
    return tables
