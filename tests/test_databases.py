"""What a database-backed test starts from: a database at the newest migration, every table empty, ids from 1."""

from __future__ import annotations

from alembic.script import ScriptDirectory
from sqlalchemy import func, select, text

from styleq.shared.adapters.db import make_engine, make_session_factory, session_scope
from styleq.shared.adapters.migrate import alembic_config
from styleq.shared.adapters.models import Base
from styleq.shared.domain.params import resolve_params
from styleq.shared.service.jobs import create_job
from styleq.shared.service.keys import create_api_key
from tests.databases import empty_postgres_database

SECRET_KEY = "database-fixture-tests"


def add_key_and_job(url: str) -> int:
    """Write a key and a job with its style (three tables); return the key's id."""
    engine = make_engine(url)
    with session_scope(make_session_factory(engine)) as session:
        owner, _ = create_api_key(session, "alice", secret=SECRET_KEY)
        create_job(session, owner, resolve_params({"iterations": 100}), "a" * 64, "b" * 64)
        session.flush()
        key_id = owner.id
    engine.dispose()
    return key_id


def row_counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as connection:
        counts = {
            table.name: connection.execute(select(func.count()).select_from(table)).scalar_one() for table in Base.metadata.sorted_tables
        }
    engine.dispose()
    return counts


def revision(url: str) -> str:
    engine = make_engine(url)
    with engine.connect() as connection:
        version = connection.scalar(text("SELECT version_num FROM alembic_version"))
    engine.dispose()
    return version


def test_emptying_the_session_s_postgres_database_deletes_the_rows_of_every_table_and_restarts_the_ids(postgres_url):
    add_key_and_job(postgres_url)
    add_key_and_job(postgres_url)

    emptied = empty_postgres_database(postgres_url)

    assert set(emptied) == set(Base.metadata.tables)
    assert set(row_counts(postgres_url).values()) == {0}
    assert add_key_and_job(postgres_url) == 1
    assert revision(postgres_url) == ScriptDirectory.from_config(alembic_config(postgres_url)).get_current_head()


def test_each_copy_of_the_migrated_sqlite_file_is_a_database_of_its_own_at_the_newest_migration(migrated_sqlite, tmp_path):
    first = migrated_sqlite(tmp_path / "first.db")
    add_key_and_job(first)

    second = migrated_sqlite(tmp_path / "second.db")

    assert set(row_counts(second).values()) == {0} and row_counts(first)["jobs"] == 1
    assert revision(second) == ScriptDirectory.from_config(alembic_config(second)).get_current_head()
