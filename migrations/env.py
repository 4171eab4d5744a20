"""Alembic environment: the database URL comes from the caller's config, else from STYLEQ_* settings."""

from __future__ import annotations

from alembic import context

from styleq.shared.adapters.db import make_engine
from styleq.shared.adapters.models import Base
from styleq.shared.adapters.settings import load_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or load_settings().database


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # Batch mode rebuilds a SQLite table by copying it and dropping the old one; with foreign keys enforced
            # that drop cascades into every row referencing it (a job's checkpoints and styles). The pragma only
            # takes effect outside a transaction, hence the commit before the migrations begin theirs.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        # Batch mode lets later migrations alter columns on SQLite, which has no ALTER COLUMN.
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
