"""key sessions: how each API key's hash was made, and the dashboard's server-side sessions

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Keys made before this revision hold a plain SHA-256 (no secret is known here to rehash them):
    # they keep working and are rewritten as HMAC-SHA256 at their next use.
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("hash_scheme", sa.String(length=16), nullable=False, server_default="sha256"))
    # Cookies from before this revision name no session here, so those browsers sign in again.
    op.create_table(
        "dashboard_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("dashboard_sessions") as batch:
        batch.create_index(batch.f("ix_dashboard_sessions_key_id"), ["key_id"], unique=False)


def downgrade() -> None:
    # Going back forgets every session (browsers sign in again) and which hashes were keyed: keys made
    # since 0007 stop working under the older code, which knows only the plain hash.
    with op.batch_alter_table("dashboard_sessions") as batch:
        batch.drop_index(batch.f("ix_dashboard_sessions_key_id"))
    op.drop_table("dashboard_sessions")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("hash_scheme")
