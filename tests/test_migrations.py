"""The migrations build exactly the schema the models describe, on SQLite and Postgres, and step back down."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from shared.db import make_engine
from shared.migrate import alembic_config, upgrade_database
from shared.models import Base
from tests.services import fresh_postgres_database


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    with fresh_postgres_database() as url:
        yield url


def differences(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()


def job_columns(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {column["name"] for column in inspect(engine).get_columns("jobs")}
    finally:
        engine.dispose()


def test_the_migrations_build_the_schema_the_models_describe(database):
    upgrade_database(database)

    assert differences(database) == []


def test_the_batch_columns_come_and_go_with_their_migration(database):
    upgrade_database(database)
    command.downgrade(alembic_config(database), "0002")
    assert {"batch_size", "batch_id"}.isdisjoint(job_columns(database))

    upgrade_database(database)
    assert {"batch_size", "batch_id"} <= job_columns(database) and differences(database) == []
