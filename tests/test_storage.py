"""Storage faults: malformed history, a full disk, a read-only folder, kill -9; real processes where it matters."""

import io
import json
import logging
import os
import signal
import subprocess
import threading
from contextlib import contextmanager

import pytest
import requests
from PIL import Image

import servers
import storage
from conftest import image_bytes, stored_files
from test_app import upload
from test_history import generation_record, image_record
from test_server import data_env

UUID = "0b4f3c2e-1d5a-4e6f-8a9b-0c1d2e3f4a5b"


def test_store_is_atomic_and_leaves_no_temporary(tmp_path):
    path = storage.store(str(tmp_path), "a.png", b"data", "UPLOAD_FOLDER")
    assert open(path, "rb").read() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_the_sweep_removes_orphans_and_temporaries_and_nothing_else(tmp_path, caplog):
    uploads, generated = tmp_path / "uploads", tmp_path / "uploads" / "generated"
    generated.mkdir(parents=True)
    kept, orphan, drawn = f"{UUID}.png", f"{UUID[:-1]}6.jpg", f"{UUID[:-1]}7.png"
    for folder, name in [(uploads, kept), (uploads, orphan), (uploads, ".incoming-x1"), (generated, drawn),
                         (generated, ".incoming-x2"), (uploads, "notes.txt")]:
        (folder / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        storage.sweep(str(uploads), [str(uploads), str(generated)], {kept})
    assert stored_files(tmp_path) == sorted([f"uploads/{kept}", "uploads/notes.txt"])
    assert "removed 2 stored files no record points to and 2 temporary files" in caplog.text


def test_the_sweep_waits_for_a_store_in_progress(tmp_path):
    uploads = tmp_path / "uploads"
    with storage.files_locked(str(uploads), exclusive=False):
        storage.store(str(uploads), f"{UUID}.png", b"x", "UPLOAD_FOLDER")  # its record is not written yet
        sweeper = threading.Thread(target=storage.sweep, args=(str(uploads), [str(uploads)], set()))
        sweeper.start()
        sweeper.join(0.5)
        assert sweeper.is_alive() and (uploads / f"{UUID}.png").exists()
    sweeper.join(10)
    assert not (uploads / f"{UUID}.png").exists()  # no record came: now it is an orphan


def write_history(path, images=(), generations=()):
    path.write_text(json.dumps({"images": dict(images), "generations": dict(generations)}))


MALFORMED = {
    "no-owner": {k: v for k, v in image_record("no-owner").items() if k != "owner"},
    "bad-caption": {**image_record("bad-caption"), "caption": 7},
    "bad-thread": {**image_record("bad-thread"), "questions": [{"question": "q"}]},
    "not-a-dict": "oops",
    "wrong-key": image_record("other-id"),
    "path-name": {**image_record("path-name"), "filename": "../../etc/passwd"},
}


def test_malformed_records_are_skipped_logged_once_and_kept_aside(make_app, data_dir, caplog):
    good = {**image_record("good", owner="someone"), "questions": []}
    write_history(data_dir / "history.json", {"good": good, **MALFORMED},
                  {"g": {"generation_id": "g", "parameters": "x"}, "g2": generation_record("g2")})
    with caplog.at_level(logging.WARNING):
        client = make_app().test_client()
        for _ in range(3):
            assert client.get("/history").status_code == 200
        assert client.get("/images/good").status_code == 200
        assert client.get("/generations/g2").status_code == 200
        for key in MALFORMED:
            assert client.get(f"/images/{key}").status_code == 404
    assert sum("malformed records" in record.getMessage() for record in caplog.records) == 1
    assert upload(client).status_code == 201  # a change: the malformed records move aside, none lost
    (aside,) = [p for p in data_dir.iterdir() if p.name.startswith("history.json.malformed-")]
    assert set(json.loads(aside.read_text())["images"]) == set(MALFORMED)
    assert set(json.loads(aside.read_text())["generations"]) == {"g"}
    kept = json.loads((data_dir / "history.json").read_text())["images"]
    assert "good" in kept and len(kept) == 2 and not set(kept) & set(MALFORMED)


def test_a_deeply_nested_history_does_not_stop_the_app(make_app, data_dir):
    (data_dir / "history.json").write_text("[" * 100_000 + "]" * 100_000)
    client = make_app().test_client()
    assert client.get("/history").status_code == 200
    assert upload(client).status_code == 201
    assert any(p.name.startswith("history.json.corrupt-") for p in data_dir.iterdir())


def test_a_history_spoiled_while_running_is_served_from_memory_then_moved_aside(make_app, data_dir):
    client = make_app().test_client()
    image_id = upload(client).get_json()["image_id"]
    (data_dir / "history.json").write_text('{"images": {')
    assert client.get(f"/images/{image_id}").status_code == 200
    assert client.post("/question", json={"image_id": image_id, "question": "still there?"}).status_code == 200
    assert any(p.name.startswith("history.json.corrupt-") for p in data_dir.iterdir())
    assert image_id in json.loads((data_dir / "history.json").read_text())["images"]


def test_a_history_spoiled_and_mended_while_running_is_not_moved_aside(make_app, data_dir):
    client = make_app().test_client()
    upload(client)
    good = (data_dir / "history.json").read_text()
    (data_dir / "history.json").write_text('{"images": {')
    assert client.get("/history").status_code == 200
    (data_dir / "history.json").write_text(good)
    assert upload(client).status_code == 201
    assert not any(p.name.startswith("history.json.corrupt-") for p in data_dir.iterdir())
    assert len(json.loads((data_dir / "history.json").read_text())["images"]) == 2


# Real processes on real mounts: a small tmpfs for a full disk, a read-only remount.

@contextmanager
def mounted(folder, options):
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): run the suite as root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@contextmanager
def app_process(data, tiny_blip, log_name="server.log", extra=None):
    port = servers.free_port()
    env = {**data_env(data, port), "CAPTION_MODEL": tiny_blip["caption"], "VQA_MODEL": tiny_blip["vqa"],
           **(extra or {})}
    log_path = str(data.parent / log_name)
    process = servers.start([servers.PYTHON, "app.py"], env, log_path)
    try:
        servers.wait_until_up(f"http://127.0.0.1:{port}/healthz", process)
        yield f"http://127.0.0.1:{port}", process, log_path
    finally:
        servers.stop(process)


def noise_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def fill(folder, leave: int) -> None:
    """Fill the mount until only about `leave` bytes are free."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    with open(folder / "filler", "ab") as file:
        file.write(b"\0" * max(0, free - leave))


# The history as a JSON file, or in SQLite in the same folder: a disk fault is the same error for both.
STORES = {"json": ({}, "history.json", "HISTORY_FILE"),
          "sqlite": ({"DATABASE_URL": "sqlite:///{data}/history.db"}, "history.db", "DATABASE_URL")}


def store_settings(store: str, data) -> dict:
    settings, _, _ = STORES[store]
    return {name: value.format(data=data) for name, value in settings.items()}


@pytest.mark.parametrize("store", STORES)
def test_a_full_disk_answers_507_and_stores_nothing(tmp_path, tiny_blip, store):
    _, history_name, _ = STORES[store]
    with mounted(tmp_path / "data", "size=12m") as data, \
            app_process(data, tiny_blip, extra=store_settings(store, data)) as (base, _, _):
        session = requests.Session()
        image_id = session.post(base + "/upload", files={"image": ("a.png", image_bytes(), "image/png")},
                                timeout=60).json()["image_id"]
        history = (data / history_name).read_bytes()
        fill(data, leave=1536 * 1024)  # past the 1 MB check before any work, short of a 3 MB upload
        big = session.post(base + "/upload", files={"image": ("big.png", noise_png(1000), "image/png")}, timeout=60)
        assert big.status_code == 507 and big.json()["code"] == "insufficient_storage"
        assert "full" in big.json()["error"] and str(data) not in big.json()["error"]
        fill(data, leave=0)
        for response in [
            session.post(base + "/upload", files={"image": ("a.png", image_bytes(), "image/png")}, timeout=60),
            session.post(base + "/question", json={"image_id": image_id, "question": "full?"}, timeout=60),
        ]:
            assert response.status_code == 507 and response.json()["code"] == "insufficient_storage"
        assert (data / history_name).read_bytes() == history
        assert not [name for name in os.listdir(data / "uploads") if name.startswith(".incoming-")]
        assert not [name for name in os.listdir(data) if ".tmp-" in name]
        assert session.get(base + "/history", timeout=10).json()["total_images"] == 1


@pytest.mark.parametrize("store", STORES)
def test_a_read_only_data_folder_serves_reads_and_refuses_writes(tmp_path, tiny_blip, store):
    _, _, setting = STORES[store]
    with mounted(tmp_path / "data", "size=16m") as data:
        session = requests.Session()
        extra = store_settings(store, data)
        with app_process(data, tiny_blip, "first.log", extra) as (base, _, _):
            body = session.post(base + "/upload", files={"image": ("a.png", image_bytes(), "image/png")},
                                timeout=60).json()
        subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
        with app_process(data, tiny_blip, "read-only.log", extra) as (base, process, log_path):
            assert session.get(base + "/history", timeout=10).json()["total_images"] == 1
            assert session.get(base + f"/images/{body['image_id']}", timeout=10).status_code == 200
            assert session.get(base + body["image_url"], timeout=10).content == base64_image(body)
            refused = session.post(base + "/upload", files={"image": ("b.png", image_bytes(), "image/png")},
                                   timeout=60)
            assert refused.status_code == 503 and refused.json()["code"] == "storage_read_only"
            assert "UPLOAD_FOLDER" in refused.json()["error"]
            asked = session.post(base + "/question", json={"image_id": body["image_id"], "question": "q?"},
                                 timeout=60)
            assert asked.status_code == 503 and setting in asked.json()["error"]
            assert process.poll() is None
        assert "cannot be written" in open(log_path).read()


def base64_image(body) -> bytes:
    import base64

    return base64.b64decode(body["image"])


def test_after_kill_9_the_next_start_removes_what_no_record_points_to(tmp_path, tiny_blip):
    data = tmp_path / "data"
    session = requests.Session()
    for round_ in range(3):
        with app_process(data, tiny_blip, f"round-{round_}.log") as (base, process, _):
            session.get(base + "/history", timeout=10)  # the session's cookie, before the threads share it
            stop = threading.Event()

            def keep_uploading():
                while not stop.is_set():
                    try:
                        session.post(base + "/upload", files={"image": ("a.png", image_bytes(), "image/png")},
                                     timeout=10)
                    except requests.RequestException:
                        return

            uploaders = [threading.Thread(target=keep_uploading) for _ in range(4)]
            for uploader in uploaders:
                uploader.start()
            while len(stored_files(data / "uploads")) < 3 * (round_ + 1):
                threading.Event().wait(0.05)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            stop.set()
            for uploader in uploaders:
                uploader.join(20)
    (data / "uploads" / f"{UUID}.png").write_bytes(image_bytes())  # as a kill between file and record leaves it
    (data / "uploads" / ".incoming-abc").write_bytes(b"half")
    with app_process(data, tiny_blip, "after.log") as (base, _, log_path):
        records = json.loads((data / "history.json").read_text())["images"]
        on_disk = {name for name in os.listdir(data / "uploads") if storage.STORED_NAME.fullmatch(name)}
        assert on_disk == {record["filename"] for record in records.values()}
        assert not [name for name in os.listdir(data / "uploads") if name.startswith(".incoming-")]
        assert session.get(base + "/history?limit=200", timeout=10).json()["total_images"] == len(records)
        assert "stored files no record points to" in open(log_path).read()
