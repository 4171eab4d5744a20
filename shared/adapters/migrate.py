"""Apply the Alembic migrations in `migrations/` (the package `styleq.migrations`) to a database."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config

# Found as the package it is installed as, so a plain (non-editable) install finds the copy it carries.
MIGRATIONS = Path(str(resources.files("styleq.migrations")))


def alembic_config(database_url: str) -> Config:
    """Return an Alembic config for `database_url` without an alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would read a '%' in a password as a reference.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """Bring the schema of `database_url` up to `revision` (the newest by default)."""
    command.upgrade(alembic_config(database_url), revision)
