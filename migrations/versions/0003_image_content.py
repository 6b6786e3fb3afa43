"""Images remember the SHA-256 of their bytes as sent, so that an image a chat client sends again is found.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("images") as table:  # SQLite alters a table by copying it
        table.add_column(sa.Column("content_sha256", sa.String(64)))
    op.create_index("ix_images_owner_content_sha256", "images", ["owner", "content_sha256"])


def downgrade() -> None:
    op.drop_index("ix_images_owner_content_sha256", table_name="images")
    with op.batch_alter_table("images") as table:
        table.drop_column("content_sha256")
