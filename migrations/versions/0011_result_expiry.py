"""result expiry: when the retention sweep removed a succeeded job's result (the row stays; the API answers 410)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 00:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Jobs from before keep their results: none is expired.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("result_expired_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result_expired_at")
