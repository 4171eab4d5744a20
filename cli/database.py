"""The job database as the commands open it: an unreachable or unmigrated one is a one-line error, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from styleq.shared.adapters.db import make_engine, make_session_factory


def shown_url(url: str) -> str:
    """Return the database URL as an error message may show it: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an unparsable STYLEQ_DATABASE_URL)"


def database_problem(error: Exception, url: str) -> str:
    """Say in one line what went wrong with the database at `url`, never with the statement or its parameters.

    SQLAlchemy's own message carries the SQL and its parameters (an API key's hash, for one); the
    driver's first line says what happened.
    """
    cause = getattr(error, "orig", None) or error
    first_line = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
    return f"cannot use the database {shown_url(url)}: {first_line}"


def check_migrated(engine: Engine, url: str) -> None:
    """Refuse a database whose schema is not the one this styleq's migrations end at, saying how to fix it."""
    from alembic.script import ScriptDirectory

    from styleq.shared.adapters.migrate import alembic_config

    # Alembic's own table read directly: its MigrationContext would log two lines of its own on every command.
    with engine.connect() as connection:
        has_versions = inspect(connection).has_table("alembic_version")
        current = set(connection.scalars(text("SELECT version_num FROM alembic_version"))) if has_versions else set()
    heads = set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
    if not current:
        raise click.ClickException(f"the database {shown_url(url)} has no styleq tables yet; `styleq db upgrade` makes them")
    if current != heads:
        raise click.ClickException(
            f"the database {shown_url(url)} is at migration {', '.join(sorted(current))}, this styleq needs "
            f"{', '.join(sorted(heads))}: run `styleq db upgrade` (or this styleq is older than the database)"
        )


def checked_url(url: str) -> str:
    """Return `url`, refusing in one line one that SQLAlchemy cannot parse or has no driver for."""
    try:
        make_url(url).get_dialect().import_dbapi()
    except (ArgumentError, ValueError, ImportError) as error:
        raise click.ClickException(f"STYLEQ_DATABASE_URL is not a database URL styleq can use: {error}") from None
    return url


@contextmanager
def opened_database(url: str) -> Iterator[sessionmaker[Session]]:
    """Yield a session factory on the migrated database at `url`; an unreachable or unmigrated one fails the command in one line."""
    engine = make_engine(checked_url(url))
    try:
        check_migrated(engine, url)
        yield make_session_factory(engine)
    except SQLAlchemyError as error:
        raise click.ClickException(database_problem(error, url)) from None
    finally:
        engine.dispose()
