"""The history database's tables as the latest migration leaves them (tests compare the two), and how a record
maps to its row. history_sql and history_sql_jobs query them; migrations/ makes and upgrades them.
"""

import sqlalchemy as sa

# The tables as the latest migration leaves them (tests compare the two).
metadata = sa.MetaData()
images = sa.Table(
    "images", metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # insertion order, which breaks ties of created_at
    sa.Column("image_id", sa.String, nullable=False, unique=True),
    sa.Column("owner", sa.String, nullable=False),
    sa.Column("filename", sa.String, nullable=False),
    sa.Column("original_name", sa.String),
    sa.Column("mime_type", sa.String, nullable=False),
    sa.Column("prompt", sa.Text),
    sa.Column("caption", sa.Text, nullable=False),
    sa.Column("created_at", sa.String, nullable=False),  # ISO 8601 in UTC, so text order is time order
    sa.Column("content_sha256", sa.String(64)),  # of the bytes as sent, for /v1's resent images; null before 0003
    sa.Index("ix_images_owner_created_at", "owner", "created_at"),
    sa.Index("ix_images_owner_content_sha256", "owner", "content_sha256"),
)
questions = sa.Table(
    "questions", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("image_id", sa.String, sa.ForeignKey("images.image_id", ondelete="CASCADE"), nullable=False),
    sa.Column("owner", sa.String),  # the session that asked; null in threads from before sessions were kept
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("asked_at", sa.String, nullable=False),
    sa.Index("ix_questions_image_id", "image_id"),
)
generations = sa.Table(
    "generations", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("generation_id", sa.String, nullable=False, unique=True),
    sa.Column("owner", sa.String, nullable=False),
    sa.Column("filename", sa.String, nullable=False),
    sa.Column("mime_type", sa.String, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("parameters", sa.JSON, nullable=False),
    sa.Column("provider", sa.String),
    sa.Column("created_at", sa.String, nullable=False),
    sa.Index("ix_generations_owner_created_at", "owner", "created_at"),
)
key_states = sa.Table(
    "key_states", metadata,
    sa.Column("key_hash", sa.String(64), primary_key=True),  # SHA-256 of the key, never the key
    sa.Column("state", sa.String, nullable=False),
    sa.Column("until", sa.Float, nullable=False),
    sa.Column("reason", sa.String, nullable=False),
    sa.Column("rate_limits", sa.Integer, nullable=False),
)
# Accounts. No foreign keys to users: an account's keys and sessions are deleted with it in one
# transaction, and its images and generations outlive it (their owner is its user_id, claimable again).
users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # insertion order, which breaks ties of created_at
    sa.Column("user_id", sa.String, nullable=False, unique=True),
    sa.Column("name", sa.String, nullable=False, unique=True),
    sa.Column("role", sa.String, nullable=False),
    sa.Column("password_hash", sa.String, nullable=False),
    sa.Column("created_at", sa.String, nullable=False),
    sa.Column("password_changed_at", sa.String, nullable=False),
)
api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key_id", sa.String, nullable=False, unique=True),
    sa.Column("user_id", sa.String, nullable=False),
    sa.Column("label", sa.String, nullable=False),
    sa.Column("prefix", sa.String, nullable=False),  # the key's first characters, for people to tell keys apart
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # SHA-256 of the key, never the key
    sa.Column("created_at", sa.String, nullable=False),
    sa.Column("last_used_at", sa.String),
    sa.Index("ix_api_keys_user_id", "user_id"),
)
sessions = sa.Table(
    "sessions", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("session_hash", sa.String(64), nullable=False, unique=True),  # a hash of the cookie's token
    sa.Column("user_id", sa.String, nullable=False),
    sa.Column("created_at", sa.String, nullable=False),
    sa.Index("ix_sessions_user_id", "user_id"),
)
# Batch jobs (history_sql_jobs says how they are claimed). An item's image is an ordinary image row.
jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.String, nullable=False, unique=True),
    sa.Column("owner", sa.String, nullable=False),
    sa.Column("status", sa.String, nullable=False),  # queued, running, done, cancelled, failed
    sa.Column("prompt", sa.Text),
    sa.Column("prefix", sa.Text),
    sa.Column("suffix", sa.Text),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("skipped", sa.JSON, nullable=False),  # the first entries that were not taken, with why
    sa.Column("skipped_count", sa.Integer, nullable=False),  # all of them
    sa.Column("created_at", sa.String, nullable=False),
    sa.Column("started_at", sa.String),  # the first claim, from which eta_s reckons the rate
    sa.Column("finished_at", sa.String),
    sa.Column("last_claimed_at", sa.String),  # jobs take turns: the least recently claimed from goes first
    sa.Index("ix_jobs_owner_created_at", "owner", "created_at"),
    sa.Index("ix_jobs_status", "status"),
)
job_items = sa.Table(
    "job_items", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.String, sa.ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("file_name", sa.Text, nullable=False),
    sa.Column("staged", sa.String, nullable=False),
    sa.Column("state", sa.String, nullable=False),  # pending, claimed, done, failed, cancelled
    sa.Column("claimed_by", sa.String),
    sa.Column("claimed_until", sa.String),
    sa.Column("caption", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("image_id", sa.String),
    sa.Column("finished_at", sa.String),
    sa.UniqueConstraint("job_id", "position", name="uq_job_items_job_id_position"),
    sa.Index("ix_job_items_job_id_state", "job_id", "state"),
)

TABLES = {"images": images, "generations": generations}
KEY_COLUMN = {"images": images.c.image_id, "generations": generations.c.generation_id}
FIELDS = {
    "images": ("image_id", "owner", "filename", "original_name", "mime_type", "prompt", "caption", "created_at",
               "content_sha256"),
    "generations": ("generation_id", "owner", "filename", "mime_type", "description", "parameters", "provider",
                    "created_at"),
}
QUESTION_FIELDS = ("question", "answer", "asked_at", "owner")
# The account rows' fields as the stores hand them out (the id column is the database's own).
ACCOUNT_TABLES = {"users": users, "api_keys": api_keys, "sessions": sessions}
ACCOUNT_KEYS = {"users": "user_id", "api_keys": "key_id", "sessions": "session_hash"}
ACCOUNT_FIELDS = {
    users: ("user_id", "name", "role", "password_hash", "created_at", "password_changed_at"),
    api_keys: ("key_id", "user_id", "label", "prefix", "key_hash", "created_at", "last_used_at"),
    sessions: ("session_hash", "user_id", "created_at"),
}


def row(kind: str, record: dict) -> dict:
    """A record's columns."""
    return {name: record.get(name) for name in FIELDS[kind]}


def record(kind: str, found) -> dict:
    """A row as the record the JSON store keeps (an image's questions are added by with_threads); an image's
    content_sha256, unknown for images kept before it was (null), is absent, as in the JSON store."""
    kept = {name: found[name] for name in FIELDS[kind]}
    if kind == "images" and kept["content_sha256"] is None:
        del kept["content_sha256"]
    return kept
