"""DATABASE_URL: migrations, the app's answers on SQLite and PostgreSQL, faults, shared key states, history copy."""

import io
import multiprocessing
import os
import re
import subprocess

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import history_sql
import servers
from conftest import image_bytes, stored_files
from fake_hf import chance_proof, fragments_in
from history import History
from history_sql import SchemaTooNew, SqlHistory
from keys import KeyPool, digest
from test_history_stores import generation_record, image_record


def latest_migration() -> str:
    """The newest migration, as Alembic reads migrations/: a new one needs no change in these tests."""
    config = Config()
    config.set_main_option("script_location", history_sql.MIGRATIONS)
    return ScriptDirectory.from_config(config).get_current_head()


LATEST = latest_migration()


def test_the_migrations_make_the_tables_the_store_uses(database_url, tmp_path):
    store = SqlHistory(database_url, str(tmp_path))
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), history_sql.metadata) == []
        assert MigrationContext.configure(connection).get_current_heads() == (LATEST,)
    store.close()


def test_a_database_from_a_newer_release_is_refused(database_url, tmp_path):
    SqlHistory(database_url, str(tmp_path)).close()
    engine = history_sql.make_engine(history_sql.database_url(database_url, str(tmp_path)))
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0042'"))
    engine.dispose()
    with pytest.raises(SchemaTooNew, match=f"schema version 0042, made by a newer release.*knows up to {LATEST}"):
        SqlHistory(database_url, str(tmp_path))


def run_together(target, url: str, root: str, count: int, seconds: float) -> list:
    """target(url, root, index) in count new processes started together; their exit codes."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=(url, root, index)) for index in range(count)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(seconds)
    return [process.exitcode for process in processes]


def open_and_add(url: str, root: str, index: int) -> None:
    store = SqlHistory(url, root)
    store.add_image(image_record(f"from-{index}"))
    store.close()


def test_replicas_starting_together_migrate_once(database_url, tmp_path):
    assert run_together(open_and_add, database_url, str(tmp_path), 4, 60) == [0] * 4
    store = SqlHistory(database_url, str(tmp_path))
    assert store.list("images", "me", 10, 0)[1] == 4
    store.close()


def ask_many(url: str, root: str, worker: int) -> None:
    store = SqlHistory(url, root)
    for index in range(25):
        store.add_question("shared", {"question": f"{worker}-{index}", "answer": "a", "asked_at": "t", "owner": "me"})
    store.close()


def test_processes_asking_at_once_lose_no_question(database_url, tmp_path):
    store = SqlHistory(database_url, str(tmp_path))
    store.add_image(image_record("shared"))
    assert run_together(ask_many, database_url, str(tmp_path), 4, 120) == [0] * 4
    assert len(store.image("shared")["questions"]) == 100
    store.close()


@pytest.mark.parametrize("value, message", [
    ("mysql://user@host/db", "names a mysql database"),
    ("sqlite://", "names no SQLite file"),
    ("not a url://", "not a database URL"),
])
def test_a_database_url_the_app_cannot_use_is_told(make_app, value, message):
    with pytest.raises(ValueError, match=message):
        make_app(DATABASE_URL=value)


def test_a_relative_sqlite_path_is_taken_from_the_app_folder(tmp_path):
    url = history_sql.database_url("sqlite:///data/history.db", str(tmp_path))
    assert url.database == str(tmp_path / "data" / "history.db")
    assert history_sql.database_url("postgresql://me:secret@db/history", "/").drivername == "postgresql+psycopg"


def session_story(client) -> list:
    """Upload, ask, list, delete through the API; the answers without their ids and times."""
    seen = []
    first = client.post("/upload", data={"image": (io.BytesIO(image_bytes()), "a.png")})
    second = client.post("/upload", data={"image": (io.BytesIO(image_bytes(size=(8, 8))), "b.png"),
                                          "prompt": "a picture of"})
    image_id = first.get_json()["image_id"]
    for question in ("what is it?", "and the colour?"):
        seen.append(client.post("/question", json={"image_id": image_id, "question": question}))
    seen.append(client.post("/question", json={"image_id": "nope", "question": "q"}))
    seen += [client.get("/history?limit=1"), client.get("/history?limit=1&offset=1"), client.get(f"/images/{image_id}")]
    seen.append(client.delete(f"/images/{second.get_json()['image_id']}"))
    seen += [client.get("/history"), client.delete("/history"), client.get("/history")]
    return [first, second, *seen]


def without_ids(response) -> tuple:
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<id>",
                  response.get_data(as_text=True))
    text = re.sub(r'"(created_at|asked_at)":"[^"]+"', r'"\1":"<time>"', text)
    return response.status_code, re.sub(r'"image":"[^"]+"', '"image":"<base64>"', text)


def test_the_api_answers_the_same_on_every_backend(make_app, database_url, data_dir):
    on_json = [without_ids(response) for response in session_story(make_app().test_client())]
    on_database = [without_ids(response) for response in
                   session_story(make_app(DATABASE_URL=database_url, HISTORY_FILE=str(data_dir / "unused.json"))
                                 .test_client())]
    assert on_database == on_json
    assert [status for status, _ in on_json] == [201, 201, 200, 200, 404, 200, 200, 200, 204, 200, 204, 200]
    assert not (data_dir / "unused.json").exists()


def test_a_database_that_stops_answering_gives_503_and_keeps_nothing(make_app, data_dir, caplog):
    from postgres import ThrowawayPostgres

    server = ThrowawayPostgres().start()
    try:
        app = make_app(DATABASE_URL=server.create_database(), HF_API_KEYS="hf_downSultryMoonsWhip")
        client = app.test_client()
        assert client.post("/upload", data={"image": (io.BytesIO(image_bytes()), "a.png")}
                           ).status_code == 201
        kept = stored_files(data_dir)
        server.stop()
        for response in [client.post("/upload", data={"image": (io.BytesIO(image_bytes()), "b.png")}),
                         client.get("/history")]:
            assert response.status_code == 503 and response.get_json()["code"] == "database_unavailable"
            assert "127.0.0.1" not in response.get_json()["error"]
        assert stored_files(data_dir) == kept
        pool = app.extensions["hf_client"].pool  # the keys go on with this replica's own states
        assert pool.take().position == 1 and pool.status()[0]["state"] == "active"
        assert "shared states could not be read or written (database_unavailable)" in caplog.text
    finally:
        server.stop()


def test_an_empty_new_history_keeps_the_stored_files(make_app, database_url, data_dir, caplog):
    client = make_app().test_client()
    client.post("/upload", data={"image": (io.BytesIO(image_bytes()), "a.png")})
    files = stored_files(data_dir / "uploads")
    make_app(DATABASE_URL=database_url)  # switched before the copy: nothing may be swept
    assert stored_files(data_dir / "uploads") == files and files
    assert "history copy" in caplog.text


def test_one_pool_resting_a_key_rests_it_for_every_pool_on_the_database(database_url, tmp_path, clock):
    store = SqlHistory(database_url, str(tmp_path))
    secrets = chance_proof("hf_sharedPlumJollyKnots", "hf_sharedRustyOwlsPing")
    first, second = (KeyPool(secrets, clock, shared=store.key_states()) for _ in range(2))
    key = first.take()
    first.cool(key, 90)
    assert second.take().position == 2 and second.take().position == 2
    assert second.status()[0] == {"position": 1, "fingerprint": key.fingerprint, "state": "cooling",
                                  "reason": "rate limited (429)", "retry_in_seconds": 90.0}
    second.disable(second.take(), "invalid or expired (401)")
    assert first.status()[1]["state"] == "disabled"
    clock.sleep(91)
    assert first.take().position == 1
    restarted = KeyPool(secrets, clock, shared=store.key_states())  # a restart gives disabled keys a new chance
    assert [entry["state"] for entry in restarted.status()] == ["active", "active"]
    with store.engine.connect() as connection:
        kept = connection.execute(sa.text("SELECT * FROM key_states")).all()
    assert fragments_in(str(kept), secrets) == []
    assert {row.key_hash for row in kept} <= {digest(secret) for secret in secrets}
    store.close()


def test_history_copy_moves_everything_and_again_changes_nothing(make_app, database_url, data_dir):
    app = make_app()
    client = app.test_client()
    image_id = client.post("/upload", data={"image": (io.BytesIO(image_bytes()), "a.png")}
                           ).get_json()["image_id"]
    client.post("/question", json={"image_id": image_id, "question": "what is it?"})
    History(app.config["HISTORY_FILE"]).add_generation(generation_record("g"))
    runner = app.test_cli_runner()
    done = runner.invoke(args=["history", "copy", app.config["HISTORY_FILE"], database_url])
    assert done.exit_code == 0, done.output
    assert "copied 1 images (with 1 questions) and 1 generations" in done.output and ": 2 new, 0 already" in done.output
    assert "warning: 1 records point to files" in done.output  # the generation above has no file
    again = runner.invoke(args=["history", "copy", app.config["HISTORY_FILE"], database_url])
    assert ": 0 new, 2 already there" in again.output
    moved = make_app(DATABASE_URL=database_url).test_client()
    with client.session_transaction() as before, moved.session_transaction() as after:
        after["owner"] = before["owner"]
    assert moved.get(f"/images/{image_id}").get_json() == client.get(f"/images/{image_id}").get_json()
    assert moved.get("/history").get_json() == client.get("/history").get_json()


def test_history_copy_refuses_what_it_cannot_do(make_app, tmp_path):
    runner = make_app().test_cli_runner()
    for args, message in [(["missing.json", f"sqlite:///{tmp_path}/h.db"], "is no file"),
                          ([], "name DEST")]:
        done = runner.invoke(args=["history", "copy", *args])
        assert done.exit_code != 0 and message in done.output
    (tmp_path / "h.json").write_text('{"images": {}, "generations": {}}')
    done = runner.invoke(args=["history", "copy", str(tmp_path / "h.json"), "postgresql://me:s3cret@/x?host=/nowhere"])
    assert done.exit_code != 0 and "s3cret" not in done.output


def test_the_flask_command_copies_without_loading_a_model(tmp_path, database_url):
    (tmp_path / "h.json").write_text('{"images": {}, "generations": {}}')
    env = {**os.environ, "CAPTION_MODEL": str(tmp_path / "no-model"), "VQA_MODEL": str(tmp_path / "no-model"),
           "UPLOAD_FOLDER": str(tmp_path / "uploads"), "HISTORY_FILE": str(tmp_path / "h.json")}
    done = subprocess.run([os.path.join(os.path.dirname(servers.PYTHON), "flask"), "--app", "app", "history", "copy",
                           str(tmp_path / "h.json"), database_url], cwd=servers.ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "copied 0 images" in done.stdout and "torch" not in done.stderr and "no-model" not in done.stderr
    assert not (tmp_path / "uploads").exists()


def test_history_copy_moves_accounts_keys_and_sessions_too(make_app, database_url, tmp_path):
    app = make_app(AUTH="on")
    identity = app.extensions["accounts"]
    ada = identity.create_user("ada", "correct horse battery staple")
    _, key = identity.create_key(ada["user_id"], "laptop")
    token = identity.start_session(ada["user_id"])
    runner = app.test_cli_runner()
    done = runner.invoke(args=["history", "copy", app.config["HISTORY_FILE"], database_url])
    assert done.exit_code == 0, done.output
    assert "1 accounts with 1 API keys and 1 sign-in sessions" in done.output
    moved = make_app(AUTH="on", DATABASE_URL=database_url)
    assert moved.extensions["accounts"].user_for_key(key)["name"] == "ada"
    assert moved.extensions["accounts"].user_for_session(token)["name"] == "ada"
    again = runner.invoke(args=["history", "copy", app.config["HISTORY_FILE"], database_url])
    assert again.exit_code == 0 and ": 0 new, 3 already there" in again.output
    other = History(str(tmp_path / "other.json"))
    other.add_user({**identity.named("ada"), "user_id": "another-id"})
    clash = runner.invoke(args=["history", "copy", str(tmp_path / "other.json"), database_url])
    assert clash.exit_code != 0 and "an account of the same name but with another id" in clash.output
