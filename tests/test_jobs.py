"""Batch jobs through the API, in-process: many files or a ZIP, progress, items, the three exports, cancel and
delete, the limits, and what a hostile archive cannot do."""

import csv
import io
import json
import os
import time
import zipfile

import pytest

from conftest import FakeAnswerer, FakeCaptioner, image_bytes, stored_files

PNG = image_bytes()
JPEG = image_bytes("JPEG")


@pytest.fixture
def job_app(make_app):
    apps = []

    def make(captioner=None, **config):
        app = make_app(captioner=captioner or FakeCaptioner(), answerer=FakeAnswerer(),
                       **{"JOB_WORKER": True, **config})
        app.extensions["job_runner"].poll_seconds = 0.05
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["job_runner"].close()


def archive(entries: dict) -> io.BytesIO:
    """A ZIP of {name: bytes}, in the order given."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as opened:
        for name, data in entries.items():
            opened.writestr(name, data)
    buffer.seek(0)
    return buffer


def finished(client, job_id, timeout=20.0) -> dict:
    """The job once it is no longer queued or running (polled, as a client would)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").get_json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_a_job_of_many_files_is_captioned_with_prefix_and_suffix(job_app):
    app = job_app()
    client = app.test_client()
    files = [(io.BytesIO(PNG), f"set/{index}.png") for index in range(11)] + [(io.BytesIO(JPEG), "set/b.jpg")]
    response = client.post("/jobs", data={"images": files, "prefix": "sks,", "suffix": "photo"})
    assert response.status_code == 202, response.get_json()
    started = response.get_json()
    assert started["total"] == 12 and started["status_url"] == f"/jobs/{started['job_id']}"
    assert response.headers["Location"] == started["status_url"]
    job = finished(client, started["job_id"])
    assert (job["status"], job["done"], job["failed"], job["eta_s"]) == ("done", 12, 0, None)
    assert job["finished_at"] >= job["created_at"]
    items = client.get(f"/jobs/{job['job_id']}/items?limit=5&offset=10").get_json()
    assert items["total"] == 12 and [item["file_name"] for item in items["items"]] == ["set/10.png", "set/b.jpg"]
    assert all(item["caption"] == "sks, a fake caption photo" and item["error"] is None for item in items["items"])
    # Each item is an image of the caller's history, named as it came.
    history = client.get("/history?limit=50").get_json()
    assert history["total_images"] == 12
    assert {image["original_name"] for image in history["images"]} == {f"set/{i}.png" for i in range(11)} | {
        "set/b.jpg"}
    assert client.get("/jobs").get_json()["jobs"][0]["job_id"] == job["job_id"]
    # Several items went to the captioner as one batch.
    assert app.extensions["models"].captioner.calls and len(app.extensions["models"].captioner.calls) == 12
    staged, deadline = os.path.join(app.config["JOBS_FOLDER"], job["job_id"]), time.monotonic() + 10
    while os.path.exists(staged) and time.monotonic() < deadline:  # removed right after the last batch is kept
        time.sleep(0.01)
    assert not os.path.exists(staged)


def test_a_zip_keeps_sub_folders_skips_what_is_no_image_and_fails_a_corrupt_one(job_app):
    app = job_app()
    client = app.test_client()
    sent = archive({
        "top.png": PNG, "a/b/deep.jpg": JPEG, "a/notes.txt": b"not an image", "a/broken.png": b"\x89PNG\r\n\x1a\nxx",
        "../evil.png": PNG, "/abs.png": PNG, "a/../../up.png": PNG, "__MACOSX/a/._top.png": b"junk",
        ".hidden/x.png": PNG, "C:/win.png": PNG, "a\\back.png": PNG,
    })
    response = client.post("/jobs", data={"archive": (sent, "set.zip")})
    assert response.status_code == 202, response.get_json()
    started = response.get_json()
    skipped = {entry["file_name"]: entry["reason"] for entry in started["skipped"]}
    assert set(skipped) == {"a/notes.txt", "../evil.png", "/abs.png", "a/../../up.png", "__MACOSX/a/._top.png",
                            ".hidden/x.png", "C:/win.png"}
    assert started["total"] == 4  # top.png, a/b/deep.jpg, a/broken.png, a/back.png
    job = finished(client, started["job_id"])
    assert (job["status"], job["done"], job["failed"]) == ("done", 3, 1)
    items = {item["file_name"]: item for item in client.get(f"/jobs/{job['job_id']}/items").get_json()["items"]}
    assert set(items) == {"top.png", "a/b/deep.jpg", "a/broken.png", "a/back.png"}
    assert items["a/broken.png"]["status"] == "failed" and items["a/broken.png"]["caption"] is None
    assert "PNG" in items["a/broken.png"]["error"]
    # Nothing was written outside the job's own folder.
    root = os.path.dirname(app.config["UPLOAD_FOLDER"])
    assert not any(name.endswith(("evil.png", "up.png", "abs.png", "win.png")) for _, _, names in os.walk(root)
                   for name in names)


def test_the_three_exports_file_by_file(job_app):
    app = job_app()
    client = app.test_client()
    sent = archive({"x/one.png": PNG, "x/one.jpg": JPEG, "two.png": PNG, "é/ü.png": PNG, "bad.png": b"nope"})
    started = client.post("/jobs", data={"archive": (sent, "a.zip"), "prefix": "tok"}).get_json()
    job = finished(client, started["job_id"])
    assert job["done"] == 4 and job["failed"] == 1
    caption = "tok a fake caption"

    txt = client.get(f"/jobs/{job['job_id']}/export?format=txt")
    assert txt.status_code == 200 and txt.mimetype == "application/zip"
    assert "attachment" in txt.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(txt.data)) as opened:
        assert sorted(opened.namelist()) == ["two.txt", "x/one.jpg.txt", "x/one.txt", "é/ü.txt"]
        assert all(opened.read(name).decode("utf-8") == caption for name in opened.namelist())

    jsonl = client.get(f"/jobs/{job['job_id']}/export?format=jsonl")
    lines = [json.loads(line) for line in jsonl.data.decode("utf-8").splitlines()]
    names = ("x/one.png", "x/one.jpg", "two.png", "é/ü.png")
    assert lines == [{"file_name": name, "text": caption} for name in names]

    table = client.get(f"/jobs/{job['job_id']}/export?format=csv")
    rows = list(csv.DictReader(io.StringIO(table.data.decode("utf-8"))))
    assert [row["file_name"] for row in rows] == ["x/one.png", "x/one.jpg", "two.png", "é/ü.png"]
    assert all(row["caption"] == caption for row in rows)

    bad = client.get(f"/jobs/{job['job_id']}/export?format=xml")
    assert bad.status_code == 400 and bad.get_json()["code"] == "invalid_format"


def test_cancel_keeps_finished_items_then_delete_removes_the_job_and_its_images(job_app, data_dir):
    captioner = FakeCaptioner()
    import threading

    gate, seen = threading.Event(), []
    original = captioner.caption_batch

    def gated(images, prompt=None, pause=None):
        seen.append(len(images))
        if len(seen) > 1:
            assert gate.wait(30)
        return original(images, prompt, pause)

    captioner.caption_batch = gated
    app = job_app(captioner, MAX_BATCH=2)
    client = app.test_client()
    files = [(io.BytesIO(PNG), f"{index}.png") for index in range(8)]
    job_id = client.post("/jobs", data={"images": files}).get_json()["job_id"]
    deadline = time.monotonic() + 10
    while client.get(f"/jobs/{job_id}").get_json()["done"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    cancelled = client.delete(f"/jobs/{job_id}")
    gate.set()
    assert cancelled.status_code == 200
    job = cancelled.get_json()["job"]
    assert job["status"] == "cancelled" and job["done"] == 2 and job["finished_at"]
    time.sleep(0.3)  # the batch that was running when it was cancelled is not kept
    after = client.get(f"/jobs/{job_id}").get_json()
    assert (after["status"], after["done"]) == ("cancelled", 2)
    states = [item["status"] for item in client.get(f"/jobs/{job_id}/items").get_json()["items"]]
    assert states[:2] == ["done", "done"] and set(states[2:]) == {"cancelled"}
    assert client.get("/history").get_json()["total_images"] == 2
    assert len(stored_files(data_dir / "uploads")) == 2

    deleted = client.delete(f"/jobs/{job_id}")
    assert deleted.get_json() == {"deleted": job_id, "images": 2}
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get("/history").get_json()["total_images"] == 0
    assert stored_files(data_dir / "uploads") == []


def test_only_the_session_that_made_a_job_cancels_it(job_app):
    app = job_app()
    owner, visitor = app.test_client(), app.test_client()
    job_id = owner.post("/jobs", data={"images": [(io.BytesIO(PNG), "a.png")]}).get_json()["job_id"]
    finished(owner, job_id)
    assert visitor.get("/jobs").get_json()["total"] == 0
    refused = visitor.delete(f"/jobs/{job_id}")
    assert refused.status_code == 403 and refused.get_json()["code"] == "not_owner"
    assert owner.get(f"/jobs/{job_id}").status_code == 200


@pytest.mark.parametrize("data, code, status", [
    ({}, "missing_images", 400),
    ({"images": [(io.BytesIO(b"text"), "a.txt")]}, "no_images", 400),
    ({"archive": (io.BytesIO(b"not a zip"), "a.zip")}, "invalid_archive", 400),
    ({"images": [(io.BytesIO(PNG), "a.png")], "prompt": "x" * 201}, "prompt_too_long", 400),
    ({"images": [(io.BytesIO(PNG), "a.png")], "prefix": "\x00"}, "invalid_prefix", 400),
])
def test_bad_requests_are_refused_and_leave_nothing(job_app, data, code, status):
    app = job_app()
    client = app.test_client()
    response = client.post("/jobs", data=data)
    assert (response.status_code, response.get_json()["code"]) == (status, code)
    assert client.get("/jobs").get_json()["total"] == 0
    assert not os.listdir(app.config["JOBS_FOLDER"]) if os.path.isdir(app.config["JOBS_FOLDER"]) else True


def test_limits_on_files_bytes_and_jobs_at_once(job_app):
    app = job_app(JOB_MAX_FILES=3, JOB_MAX_MB=1, JOBS_PER_ACCOUNT=1, JOB_WORKER=False)
    client = app.test_client()
    many = client.post("/jobs", data={"images": [(io.BytesIO(PNG), f"{i}.png") for i in range(4)]})
    assert (many.status_code, many.get_json()["code"]) == (413, "too_many_files")
    entries = archive({f"{i}.png": PNG for i in range(4)})
    assert client.post("/jobs", data={"archive": (entries, "a.zip")}).get_json()["code"] == "too_many_files"
    # A zip bomb: a few KB that decompress to more than JOB_MAX_MB.
    bomb = archive({"a.png": PNG + bytes(3 << 20)})
    assert len(bomb.getvalue()) < 50_000
    refused = client.post("/jobs", data={"archive": (bomb, "bomb.zip")})
    assert (refused.status_code, refused.get_json()["code"]) == (413, "job_too_large")
    assert client.post("/jobs", data={"images": [(io.BytesIO(PNG), "a.png")]}).status_code == 202
    second = client.post("/jobs", data={"images": [(io.BytesIO(PNG), "a.png")]})
    assert (second.status_code, second.get_json()["code"]) == (429, "too_many_jobs")
    assert client.get("/jobs").get_json()["total"] == 1
    assert len(os.listdir(app.config["JOBS_FOLDER"])) == 1


def test_an_image_over_the_byte_limit_is_a_failed_item(job_app):
    app = job_app(MAX_IMAGE_BYTES=len(PNG) + 10)
    client = app.test_client()
    big = image_bytes(size=(400, 400), color=None) + bytes(100)
    job = finished(client, client.post("/jobs", data={"images": [(io.BytesIO(PNG), "small.png"),
                                                                 (io.BytesIO(big), "big.png")]}).get_json()["job_id"])
    assert (job["done"], job["failed"]) == (1, 1)
    items = client.get(f"/jobs/{job['job_id']}/items").get_json()["items"]
    assert items[1]["error"] and "MB" in items[1]["error"]


def test_with_accounts_a_job_is_its_account_s_and_an_admin_reads_all(job_app):
    from accounts import Accounts

    app = job_app(AUTH="on")
    identity: Accounts = app.extensions["accounts"]
    identity.create_user("ada", "correct horse battery staple", "admin")
    for name in ("grace", "alan"):
        identity.create_user(name, "correct horse battery staple")
    clients = {}
    for name in ("ada", "grace", "alan"):
        clients[name] = app.test_client()
        assert clients[name].post("/login", json={"username": name, "password": "correct horse battery staple"}
                                  ).status_code == 200
    job_id = clients["grace"].post("/jobs", data={"images": [(io.BytesIO(PNG), "a.png")]}).get_json()["job_id"]
    finished(clients["grace"], job_id)
    missing = clients["alan"].get("/jobs/no-such-job").get_json()
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/items", f"/jobs/{job_id}/export?format=csv"):
        refused = clients["alan"].get(path)
        assert refused.status_code == 404 and refused.get_json()["code"] == missing["code"] == "job_not_found"
    assert clients["alan"].delete(f"/jobs/{job_id}").status_code == 404
    assert clients["alan"].get("/jobs").get_json()["total"] == 0
    assert clients["ada"].get(f"/jobs/{job_id}").status_code == 200  # an admin reads every job
    assert clients["ada"].delete(f"/jobs/{job_id}").status_code == 404  # and deletes only its own
    assert clients["grace"].get(f"/jobs/{job_id}/items").get_json()["items"][0]["status"] == "done"
    image_id = clients["grace"].get(f"/jobs/{job_id}/items").get_json()["items"][0]["image_id"]
    assert clients["grace"].get(f"/images/{image_id}").status_code == 200
    assert clients["alan"].get(f"/images/{image_id}").status_code == 404
    assert app.test_client().get("/jobs").status_code == 401


def test_delete_history_takes_the_jobs_and_their_waiting_files(job_app):
    app = job_app(JOB_WORKER=False)  # nothing runs: the files wait
    client = app.test_client()
    job_id = client.post("/jobs", data={"images": [(io.BytesIO(PNG), "a.png")]}).get_json()["job_id"]
    assert os.listdir(os.path.join(app.config["JOBS_FOLDER"], job_id)) == ["0"]
    assert client.delete("/history").status_code == 204
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert os.listdir(app.config["JOBS_FOLDER"]) == []


def test_a_restart_removes_the_files_of_jobs_that_are_gone(job_app, make_app):
    app = job_app(JOB_WORKER=False)
    client = app.test_client()
    job_id = client.post("/jobs", data={"images": [(io.BytesIO(PNG), "a.png")]}).get_json()["job_id"]
    stray = os.path.join(app.config["JOBS_FOLDER"], "left-by-a-crash")
    os.makedirs(stray)
    os.utime(stray, (time.time() - 7200, time.time() - 7200))
    filling = os.path.join(app.config["JOBS_FOLDER"], "another-replica-is-staging-it")
    os.makedirs(filling)
    make_app()  # a restart over the same folders
    # The queued job's files wait for it; a folder changed within the hour may be a job still arriving.
    assert sorted(os.listdir(app.config["JOBS_FOLDER"])) == sorted([job_id, "another-replica-is-staging-it"])


def test_a_job_may_hold_more_files_than_a_form_s_usual_thousand_parts(job_app):
    app = job_app(JOB_WORKER=False)
    client = app.test_client()
    files = [(io.BytesIO(PNG), f"f/{index}.png") for index in range(1100)]
    response = client.post("/jobs", data={"images": files, "prefix": "p"})
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["total"] == 1100


def test_eta_is_the_time_left_at_the_rate_so_far(job_app):
    import job_actions
    from history import iso_time

    app = job_app(JOB_WORKER=False)
    job = {"job_id": "j", "status": "running", "total": 100, "done": 20, "failed": 5, "created_at": iso_time(0),
           "started_at": iso_time(1000), "skipped": []}
    with app.test_request_context():
        assert job_actions.view(job, clock=lambda: 1050)["eta_s"] == 150.0  # 25 in 50 s: 75 more in 150 s
        assert job_actions.view({**job, "done": 0, "failed": 0}, clock=lambda: 1050)["eta_s"] is None
        assert job_actions.view({**job, "status": "done"}, clock=lambda: 1050)["eta_s"] is None


def test_cancel_never_deletes_a_job_that_has_ended(job_app):
    app = job_app()
    client = app.test_client()
    job_id = client.post("/jobs", data={"images": [(io.BytesIO(PNG), "a.png")]}).get_json()["job_id"]
    finished(client, job_id)
    answer = client.post(f"/jobs/{job_id}/cancel")
    assert answer.status_code == 200 and answer.get_json()["job"]["status"] == "done"
    assert client.get(f"/jobs/{job_id}").get_json()["done"] == 1
    assert client.get("/history").get_json()["total_images"] == 1
    assert app.test_client().post(f"/jobs/{job_id}/cancel").status_code == 403  # another session


def test_a_body_over_the_limits_is_a_413_that_says_which(job_app):
    app = job_app(JOB_MAX_MB=1, JOB_MAX_FILES=50, JOB_WORKER=False)
    client = app.test_client()
    big = client.post("/jobs", data={"images": [(io.BytesIO(bytes(2 << 20)), "a.png")]})
    assert (big.status_code, big.get_json()["code"]) == (413, "job_too_large")
    parts = client.post("/jobs", data={"images": [(io.BytesIO(PNG), f"{i}.png") for i in range(120)]})
    assert (parts.status_code, parts.get_json()["code"]) == (413, "too_many_files")
    assert client.get("/jobs").get_json()["total"] == 0


def test_jobs_sent_at_once_stay_within_jobs_per_account(job_app):
    from concurrent.futures import ThreadPoolExecutor

    app = job_app(JOBS_PER_ACCOUNT=2, JOB_WORKER=False)
    client = app.test_client()
    client.get("/jobs")  # the session, shared by the requests below
    cookie = client.get_cookie("session")

    def send(_):
        sender = app.test_client()
        sender.set_cookie(cookie.key, cookie.value)
        return sender.post("/jobs", data={"images": [(io.BytesIO(PNG), "a.png")]}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(8)))
    assert sorted(statuses) == [202, 202] + [429] * 6
    assert client.get("/jobs").get_json()["total"] == 2
    assert len(os.listdir(app.config["JOBS_FOLDER"])) == 2  # the refused ones left no files


def test_a_zip_s_skipped_entries_are_listed_up_to_a_hundred_and_counted(job_app):
    app = job_app(JOB_WORKER=False)
    client = app.test_client()
    entries = {f"notes/{index}.txt": b"text" for index in range(150)} | {"a.png": PNG}
    job = client.post("/jobs", data={"archive": (archive(entries), "a.zip")}).get_json()
    assert (job["total"], len(job["skipped"]), job["skipped_count"]) == (1, 100, 150)
    assert client.get(f"/jobs/{job['job_id']}").get_json()["skipped_count"] == 150


class InfoZipEntry(zipfile.ZipInfo):
    """An entry named in UTF-8 without the UTF-8 flag, as Info-ZIP's zip and macOS's Archive Utility write them."""

    def _encodeFilenameFlags(self):
        return self.filename.encode("utf-8"), self.flag_bits


def test_names_in_utf_8_without_the_zip_s_flag_are_read_as_meant_and_a_damaged_entry_is_skipped(job_app):
    app = job_app()
    client = app.test_client()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as opened:
        opened.writestr(InfoZipEntry("写真/фото.png"), PNG)
        opened.writestr("ok.png", PNG)
        opened.writestr("broken.png", PNG)
    data = bytearray(buffer.getvalue())
    at = data.index(PNG, data.index(b"broken.png"))  # the third entry's content, stored: a CRC that fails
    data[at + 20] ^= 0xFF
    job = client.post("/jobs", data={"archive": (io.BytesIO(bytes(data)), "a.zip")}).get_json()
    assert job["total"] == 2
    assert [entry["file_name"] for entry in job["skipped"]] == ["broken.png"]
    assert "damaged" in job["skipped"][0]["reason"]
    finished(client, job["job_id"])
    names = [item["file_name"] for item in client.get(f"/jobs/{job['job_id']}/items").get_json()["items"]]
    assert names == ["写真/фото.png", "ok.png"]


@pytest.mark.parametrize("field", ["prefix", "suffix"])
def test_a_prefix_or_suffix_stays_on_one_line(job_app, field):
    client = job_app(JOB_WORKER=False).test_client()
    refused = client.post("/jobs", data={"images": [(io.BytesIO(PNG), "a.png")], field: "sks\nphoto"})
    assert (refused.status_code, refused.get_json()["code"]) == (400, f"invalid_{field}")


def test_names_that_could_not_be_unpacked_are_skipped(job_app):
    client = job_app(JOB_WORKER=False).test_client()
    sent = archive({"ok.png": PNG, "．．/up.png": PNG, ("x" * 300) + ".png": PNG})
    job = client.post("/jobs", data={"archive": (sent, "a.zip")}).get_json()
    assert job["total"] == 1 and job["skipped_count"] == 2


def test_a_damaged_entry_leaves_no_half_written_file(job_app):
    app = job_app(JOB_WORKER=False)
    large = image_bytes(size=(64, 64)) + bytes(4 << 20)  # read in chunks: the CRC fails after the first is written
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as opened:
        opened.writestr("ok.png", PNG)
        opened.writestr("broken.png", large)
    data = bytearray(buffer.getvalue())
    data[data.index(large[:64], data.index(b"broken.png")) + 20] ^= 0xFF  # stored: its CRC fails at the end
    job = app.test_client().post("/jobs", data={"archive": (io.BytesIO(bytes(data)), "a.zip")}).get_json()
    assert job["total"] == 1 and job["skipped"][0]["file_name"] == "broken.png"
    assert os.listdir(os.path.join(app.config["JOBS_FOLDER"], job["job_id"])) == ["0"]
