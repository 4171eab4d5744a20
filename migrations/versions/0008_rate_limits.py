"""rate limits: each API key's /v1 requests counted per one-minute window

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 00:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The counters every API process shares: one row per key and window, bumped by one upsert a request.
    op.create_table(
        "request_windows",
        sa.Column("api_key_id", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("api_key_id", "window_start"),
    )


def downgrade() -> None:
    op.drop_table("request_windows")
