"""checkpoint scale: the fraction of the output size a coarse-to-fine job had at each checkpoint

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 23:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every checkpoint written before coarse-to-fine was at full size.
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("scale", sa.Float(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("scale")
