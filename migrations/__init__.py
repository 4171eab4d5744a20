"""The database's migrations, which Alembic runs from this folder (`styleq db upgrade`); installed with the package so a plain `pip install` carries them."""
