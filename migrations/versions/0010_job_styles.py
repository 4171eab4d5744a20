"""job styles: a job's style pictures in their own table, so that one job may blend several

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 00:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_styles",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "position"),
    )
    op.create_index("ix_job_styles_sha256", "job_styles", ["sha256"], unique=False)
    # Every job so far had one style picture: it becomes the first, and only, of its styles.
    op.execute("INSERT INTO job_styles (job_id, position, sha256) SELECT id, 0, style_sha256 FROM jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("style_sha256")


def downgrade() -> None:
    # Back to one style picture a job: a blend keeps its first (and its params still name the weights, which
    # the older code refuses, so such a job fails with invalid_params there rather than running as something else).
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("style_sha256", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE jobs SET style_sha256 = (SELECT sha256 FROM job_styles WHERE job_styles.job_id = jobs.id AND job_styles.position = 0)"
    )
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("style_sha256", existing_type=sa.String(length=64), nullable=False)
    op.drop_index("ix_job_styles_sha256", table_name="job_styles")
    op.drop_table("job_styles")
