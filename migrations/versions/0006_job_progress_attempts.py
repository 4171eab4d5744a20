"""job progress attempts: the iteration of the last saved state, where the current attempt resumed, and attempts without progress

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 00:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A job is given up only after attempts that saved nothing new; jobs from before start with none.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("saved_iteration", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("resumed_iteration", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("stalled_attempts", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("stalled_attempts")
        batch.drop_column("resumed_iteration")
        batch.drop_column("saved_iteration")
