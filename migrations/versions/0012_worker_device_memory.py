"""worker device memory: the bytes of memory each worker's device has, which the API plans job sizes by

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Workers that reported before this column stay unknown until their next report (every sweep).
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("device_memory_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("device_memory_bytes")
