"""Migration 0002 (accounts) on a history made before accounts existed, on SQLite and PostgreSQL."""

from contextlib import contextmanager

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import history_sql
from history_sql import SqlHistory
from test_account_stores import user_record
from test_history_stores import generation_record, image_record


@contextmanager
def alembic_on(url: str, root: str):
    """Alembic's config and a connection in a transaction on the database, as history_sql.migrate() has them."""
    engine = history_sql.make_engine(history_sql.database_url(url, root))
    config = Config()
    config.set_main_option("script_location", history_sql.MIGRATIONS)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            yield config, connection
    finally:
        engine.dispose()


def history_before_accounts(url: str, root: str) -> None:
    """A database at schema 0001 holding one image (with a question) and one generation of an anonymous session."""
    with alembic_on(url, root) as (config, connection):
        command.upgrade(config, "0001")
        image = history_sql.row("images", image_record("old", owner="0f3a-session"))
        del image["content_sha256"]  # a column since 0003
        connection.execute(sa.table("images", *map(sa.column, image)).insert(), [image])
        connection.execute(history_sql.questions.insert(), [history_sql.question_row(
            "old", {"question": "q", "answer": "a", "asked_at": "t", "owner": "0f3a-session"})])
        connection.execute(history_sql.generations.insert(),
                           [history_sql.row("generations", generation_record("made", owner="0f3a-session"))])


def test_a_history_from_before_accounts_is_upgraded_and_keeps_its_records(database_url, tmp_path):
    history_before_accounts(database_url, str(tmp_path))
    store = SqlHistory(database_url, str(tmp_path))
    try:
        assert store.image("old")["questions"] == [{"question": "q", "answer": "a", "asked_at": "t",
                                                    "owner": "0f3a-session"}]
        assert store.users() == []
        store.add_user(user_record("u1", "ada", "admin"))
        assert store.claim("u1") == {"images": 1, "generations": 1}
        assert store.image("old")["owner"] == "u1" and store.generation("made")["owner"] == "u1"
    finally:
        store.close()


def test_the_accounts_migration_downgrades_to_the_history_alone(database_url, tmp_path):
    SqlHistory(database_url, str(tmp_path)).close()
    with alembic_on(database_url, str(tmp_path)) as (config, connection):
        command.downgrade(config, "0001")
        tables = set(sa.inspect(connection).get_table_names())
    assert {"users", "api_keys", "sessions"}.isdisjoint(tables) and {"images", "generations"} <= tables


def test_the_image_digest_migration_downgrades_and_upgrades_again(database_url, tmp_path):
    SqlHistory(database_url, str(tmp_path)).close()
    with alembic_on(database_url, str(tmp_path)) as (config, connection):
        command.downgrade(config, "0002")
        assert "content_sha256" not in {column["name"] for column in sa.inspect(connection).get_columns("images")}
    store = SqlHistory(database_url, str(tmp_path))  # upgrades to the newest again
    try:
        store.add_image(image_record("new", content_sha256="c" * 64))
        assert store.image_with_content("me", "c" * 64)["image_id"] == "new"
    finally:
        store.close()
