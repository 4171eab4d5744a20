"""job lease owner: jobs.worker, the id of the worker process holding a running job's lease, becomes jobs.lease_owner

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("worker", new_column_name="lease_owner", existing_type=sa.String(length=200), existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("lease_owner", new_column_name="worker", existing_type=sa.String(length=200), existing_nullable=True)
