"""The history's tables: images, their questions, generations, and the API keys' shared states.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.String, nullable=False, unique=True),
        sa.Column("owner", sa.String, nullable=False),
        sa.Column("filename", sa.String, nullable=False),
        sa.Column("original_name", sa.String),
        sa.Column("mime_type", sa.String, nullable=False),
        sa.Column("prompt", sa.Text),
        sa.Column("caption", sa.Text, nullable=False),
        sa.Column("created_at", sa.String, nullable=False),
    )
    op.create_index("ix_images_owner_created_at", "images", ["owner", "created_at"])
    op.create_table(
        "questions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.String, sa.ForeignKey("images.image_id", ondelete="CASCADE"), nullable=False),
        sa.Column("owner", sa.String),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("asked_at", sa.String, nullable=False),
    )
    op.create_index("ix_questions_image_id", "questions", ["image_id"])
    op.create_table(
        "generations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("generation_id", sa.String, nullable=False, unique=True),
        sa.Column("owner", sa.String, nullable=False),
        sa.Column("filename", sa.String, nullable=False),
        sa.Column("mime_type", sa.String, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("provider", sa.String),
        sa.Column("created_at", sa.String, nullable=False),
    )
    op.create_index("ix_generations_owner_created_at", "generations", ["owner", "created_at"])
    op.create_table(
        "key_states",
        sa.Column("key_hash", sa.String(64), primary_key=True),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("until", sa.Float, nullable=False),
        sa.Column("reason", sa.String, nullable=False),
        sa.Column("rate_limits", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    for table in ("key_states", "generations", "questions", "images"):
        op.drop_table(table)
