"""Batch jobs: a job and its items, which workers claim (history_sql_jobs).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.String, nullable=False, unique=True),
        sa.Column("owner", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("prompt", sa.Text),
        sa.Column("prefix", sa.Text),
        sa.Column("suffix", sa.Text),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("skipped", sa.JSON, nullable=False),
        sa.Column("skipped_count", sa.Integer, nullable=False),
        sa.Column("created_at", sa.String, nullable=False),
        sa.Column("started_at", sa.String),
        sa.Column("finished_at", sa.String),
        sa.Column("last_claimed_at", sa.String),
    )
    op.create_index("ix_jobs_owner_created_at", "jobs", ["owner", "created_at"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "job_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.String, sa.ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("file_name", sa.Text, nullable=False),
        sa.Column("staged", sa.String, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("claimed_by", sa.String),
        sa.Column("claimed_until", sa.String),
        sa.Column("caption", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("image_id", sa.String),
        sa.Column("finished_at", sa.String),
        sa.UniqueConstraint("job_id", "position", name="uq_job_items_job_id_position"),
    )
    op.create_index("ix_job_items_job_id_state", "job_items", ["job_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_job_items_job_id_state", table_name="job_items")
    op.drop_table("job_items")
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.drop_index("ix_jobs_owner_created_at", table_name="jobs")
    op.drop_table("jobs")
