"""The migrations build exactly the schema the models describe, on SQLite and Postgres, and step back down."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from styleq.shared.adapters.db import make_engine, make_session_factory
from styleq.shared.adapters.migrate import alembic_config, upgrade_database
from styleq.shared.adapters.models import Base, Job, JobStyle, KeyHashScheme
from styleq.shared.service.keys import authenticate, hash_key
from tests.services import POSTGRES_ADMIN_URL, fresh_postgres_database


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request, tmp_path):
    """A database no migration has run on."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def migrated_postgres() -> Iterator[str]:
    """A Postgres database migrated from empty to the newest revision, for this module's tests to copy; none connects to it."""
    with fresh_postgres_database() as url:
        upgrade_database(url)
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    """A database of its own for one test, migrated from empty to the newest revision: a copy of one migrated once.

    That migrating from empty builds the models' schema is test_the_migrations_build_the_schema_the_models_describe's.
    """
    if request.param == "sqlite":
        yield request.getfixturevalue("migrated_sqlite")(tmp_path / "jobs.db")
        return
    template = request.getfixturevalue("migrated_postgres")
    name = f"styleq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template.rsplit("/", 1)[1]}"')
    try:
        yield f"{template.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


def test_the_migrations_build_the_schema_the_models_describe(empty_database):
    upgrade_database(empty_database)

    assert differences(empty_database) == []


def test_the_batch_columns_come_and_go_with_their_migration(database):
    command.downgrade(alembic_config(database), "0002")
    assert {"batch_size", "batch_id"}.isdisjoint(job_columns(database))

    upgrade_database(database)
    assert {"batch_size", "batch_id"} <= job_columns(database) and differences(database) == []


def test_the_lease_owner_column_is_the_old_worker_column_renamed_with_its_values(database):
    command.downgrade(alembic_config(database), "0003")
    engine = make_engine(database)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO api_keys (id, name, key_hash, prefix, is_admin, created_at) VALUES (1, 'a', 'h', 'p', false, CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO jobs (id, owner_id, status, params, content_sha256, style_sha256, iterations, iteration, has_preview, attempts, "
                "cancel_requested, created_at, updated_at, worker) VALUES ('j', 1, 'running', '{}', 'a', 'b', 1, 0, false, 1, false, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'gpu0@host/7')"
            )
        )
    engine.dispose()

    upgrade_database(database)

    assert "lease_owner" in job_columns(database) and "worker" not in job_columns(database)
    engine = make_engine(database)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT lease_owner FROM jobs WHERE id = 'j'")).scalar_one() == "gpu0@host/7"
    finally:
        engine.dispose()
    assert differences(database) == []


def test_the_request_counts_table_comes_and_goes_with_its_migration(database):
    command.downgrade(alembic_config(database), "0007")
    engine = make_engine(database)
    try:
        assert "request_windows" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()

    upgrade_database(database)
    assert differences(database) == []


def test_keys_from_before_0007_are_marked_plain_sha256_and_still_authenticate(database):
    token = "sq_" + "a-key-made-before-0007".ljust(43, "x")
    command.downgrade(alembic_config(database), "0006")
    engine = make_engine(database)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO api_keys (id, name, key_hash, prefix, is_admin, created_at) VALUES (1, 'old', :hash, :prefix, false, CURRENT_TIMESTAMP)"
            ),
            {"hash": hashlib.sha256(token.encode()).hexdigest(), "prefix": token[:10]},
        )
    engine.dispose()

    upgrade_database(database)

    engine = make_engine(database)
    try:
        with make_session_factory(engine)() as session:
            key = authenticate(session, token, secret="server secret")
            assert key is not None and key.id == 1
            assert key.hash_scheme == KeyHashScheme.HMAC_SHA256 and key.key_hash == hash_key(token, "server secret")
            session.commit()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT hash_scheme FROM api_keys")).scalar_one() == "hmac-sha256"
    finally:
        engine.dispose()


def test_the_dashboard_sessions_and_hash_scheme_come_and_go_with_0007(database):
    command.downgrade(alembic_config(database), "0006")
    engine = make_engine(database)
    try:
        assert "dashboard_sessions" not in inspect(engine).get_table_names()
        assert "hash_scheme" not in {column["name"] for column in inspect(engine).get_columns("api_keys")}
    finally:
        engine.dispose()

    upgrade_database(database)
    assert differences(database) == []


def test_the_webhook_columns_and_deliveries_come_and_go_with_0009(database):
    command.downgrade(alembic_config(database), "0008")
    engine = make_engine(database)
    try:
        assert "webhook_deliveries" not in inspect(engine).get_table_names()
        assert {"webhook_url", "webhook_events"}.isdisjoint(job_columns(database))
        assert "webhook_secret_version" not in {column["name"] for column in inspect(engine).get_columns("api_keys")}
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO api_keys (id, name, key_hash, prefix, is_admin, created_at) VALUES (1, 'a', 'h', 'p', false, CURRENT_TIMESTAMP)"
                )
            )
    finally:
        engine.dispose()

    upgrade_database(database)

    engine = make_engine(database)
    try:
        with engine.connect() as connection:  # a key from before signs with version 1 of its derived secret
            assert connection.execute(text("SELECT webhook_secret_version FROM api_keys")).scalar_one() == 1
    finally:
        engine.dispose()
    assert differences(database) == []


def test_jobs_from_before_0010_keep_their_one_style_as_the_first_of_their_styles_and_get_it_back_on_downgrade(database):
    command.downgrade(alembic_config(database), "0009")
    engine = make_engine(database)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO api_keys (id, name, key_hash, prefix, is_admin, created_at) VALUES (1, 'a', 'h', 'p', false, CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO jobs (id, owner_id, status, params, content_sha256, style_sha256, iterations, iteration, has_preview, attempts, "
                "cancel_requested, created_at, updated_at) VALUES (:id, 1, 'queued', '{}', :content, :style, 1, 0, false, 0, false, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"id": "1" * 32, "content": "a" * 64, "style": "b" * 64},
        )
        connection.execute(
            text(
                "INSERT INTO checkpoints (job_id, iteration, elapsed_s, content, style, tv, total, created_at) "
                "VALUES (:id, 10, 1.0, 1.0, 2.0, 0.5, 3.5, CURRENT_TIMESTAMP)"
            ),
            {"id": "1" * 32},
        )
    engine.dispose()

    upgrade_database(database)

    assert "style_sha256" not in job_columns(database) and differences(database) == []
    engine = make_engine(database)
    try:
        with engine.connect() as connection:
            # SQLite rebuilt the jobs table; the rows that refer to it stayed.
            assert connection.execute(text("SELECT iteration FROM checkpoints")).scalars().all() == [10]
    finally:
        engine.dispose()
    engine = make_engine(database)
    try:
        with make_session_factory(engine)() as session:
            job = session.get(Job, "1" * 32)
            assert job.style_hashes == ["b" * 64] and job.content_sha256 == "a" * 64
            # A blend made since: downgrading keeps its first style, the one a job of one style would have.
            session.add(JobStyle(job_id=job.id, position=1, sha256="c" * 64))
            session.commit()
    finally:
        engine.dispose()

    command.downgrade(alembic_config(database), "0009")

    engine = make_engine(database)
    try:
        assert "job_styles" not in inspect(engine).get_table_names()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT style_sha256 FROM jobs")).scalar_one() == "b" * 64
    finally:
        engine.dispose()
