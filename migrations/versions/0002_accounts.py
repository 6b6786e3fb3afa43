"""Accounts: users, their API keys and their sign-in sessions (secrets kept only as hashes).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.String, nullable=False, unique=True),
        sa.Column("name", sa.String, nullable=False, unique=True),
        sa.Column("role", sa.String, nullable=False),
        sa.Column("password_hash", sa.String, nullable=False),
        sa.Column("created_at", sa.String, nullable=False),
        sa.Column("password_changed_at", sa.String, nullable=False),
    )
    # No foreign keys to users: an account's keys and sessions are deleted with it in one transaction,
    # and its images and generations outlive it.
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key_id", sa.String, nullable=False, unique=True),
        sa.Column("user_id", sa.String, nullable=False),
        sa.Column("label", sa.String, nullable=False),
        sa.Column("prefix", sa.String, nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.String, nullable=False),
        sa.Column("last_used_at", sa.String),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.String, nullable=False),
        sa.Column("created_at", sa.String, nullable=False),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])


def downgrade() -> None:
    for table in ("sessions", "api_keys", "users"):
        op.drop_table(table)
