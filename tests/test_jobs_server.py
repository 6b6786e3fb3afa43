"""Batch jobs against real server processes on 127.0.0.1 (`python app.py`, the tiny random BLIP models): a job
resumes after kill -9 with every item captioned once, and two replicas on one PostgreSQL database share a job's
items, one of them killed in the middle.

test_jobs.py checks the API in-process, test_job_stores.py the stores' claims; here the claims must hold
across processes that die without cleaning up. Each wait polls the server, bounded by a deadline."""

import json
import os
import re
import socket
import time
from contextlib import ExitStack, contextmanager

import pytest
import requests
import sqlalchemy as sa

import history_sql
import servers
from conftest import image_bytes
from history_tables import job_items

pytestmark = pytest.mark.timeout(240)  # real processes

TOTAL = 40
NAMES = [f"set/{index:02d}.png" for index in range(TOTAL)]
SECRET_KEY = "shared-by-the-job-servers"
TIMEOUT = 30  # seconds for any one request to a server on 127.0.0.1
KEPT = re.compile(r"job items kept by (\S+): (\d+);")


def job_files() -> list[tuple]:
    """TOTAL small PNGs, each of its own colour, in the multipart field 'images'."""
    return [("images", (name, image_bytes(color=(index * 6, 255 - index * 6, 90)), "image/png"))
            for index, name in enumerate(NAMES)]


@contextmanager
def app_server(name: str, data, tiny_blip, extra: dict):
    """`python app.py` on its own port with the tiny models (greedy, short captions) and batches of 2, stopped at
    the end unless killed before; wait_until_up() before using it."""
    port = servers.free_port()
    env = {"CAPTION_MODEL": tiny_blip["caption"], "VQA_MODEL": tiny_blip["vqa"], "HOST": "127.0.0.1",
           "PORT": str(port), "SECRET_KEY": SECRET_KEY, "UPLOAD_FOLDER": str(data / "uploads"),
           "GENERATED_FOLDER": str(data / "uploads" / "generated"), "CAPTION_NUM_BEAMS": "1",
           "CAPTION_MIN_LENGTH": "1", "CAPTION_MAX_LENGTH": "5", "VQA_MAX_LENGTH": "4", "MAX_BATCH": "2",
           "RATE_LIMIT": "100000/minute", **extra}  # the tests poll often, from one address
    log_path = str(data.parent / f"{name}.log")
    process = servers.start([servers.PYTHON, "app.py"], env, log_path)
    try:
        yield f"http://127.0.0.1:{port}", process, log_path
    finally:
        if process.poll() is None:
            servers.stop(process)


def kill(process) -> None:
    """SIGKILL, no clean-up in the app; reaped, as a supervisor would, so that its process id is gone."""
    process.kill()
    process.wait(10)


def job_now(session, base, job_id) -> dict:
    response = session.get(f"{base}/jobs/{job_id}", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(session, base, job_id, done, seconds: float, process=None) -> dict:
    """The job once done(job) holds, polled; fails after the deadline or when the server exits."""
    deadline = time.monotonic() + seconds
    while True:
        job = job_now(session, base, job_id)
        if done(job):
            return job
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited ({process.returncode}) with the job at {job}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the job did not get there within {seconds} s: {job}")
        time.sleep(0.05)


def up(started: tuple) -> tuple:
    """A server from app_server once it answers."""
    base, process, _ = started
    servers.wait_until_up(base + "/healthz", process)
    return started


def finished(job: dict) -> bool:
    return job["status"] not in ("queued", "running")


def partway(job: dict) -> bool:
    return 2 <= job["done"] <= job["total"] - 10


def start_job(session, base) -> dict:
    response = session.post(base + "/jobs", files=job_files(), timeout=60)
    assert response.status_code == 202, response.text
    assert response.json()["total"] == TOTAL
    return response.json()


def kept_counts(log_path: str) -> dict[str, int]:
    """How many job items each worker of a server's log kept, from the runner's line for each batch."""
    counts: dict[str, int] = {}
    for worker, count in KEPT.findall(open(log_path, encoding="utf-8").read()):
        counts[worker] = counts.get(worker, 0) + int(count)
    return counts


def stored_images(upload_folder) -> set[str]:
    """The image files in the upload folder (not the staged jobs' folder, lock files or temporary files)."""
    return {name for name in os.listdir(upload_folder)
            if os.path.isfile(os.path.join(upload_folder, name)) and not name.endswith(".lock")}


def assert_captioned_once(session, base, job_id, images: list[dict]) -> None:
    """Every item done once: done == total, the history holds one image per file name, the items point at them."""
    job = job_now(session, base, job_id)
    assert (job["status"], job["done"], job["failed"]) == ("done", TOTAL, 0), job
    assert len(images) == TOTAL and sorted(image["original_name"] for image in images) == NAMES
    items = session.get(f"{base}/jobs/{job_id}/items?limit=1000", timeout=TIMEOUT).json()["items"]
    assert [item["file_name"] for item in items] == NAMES and {item["status"] for item in items} == {"done"}
    assert sorted(item["image_id"] for item in items) == sorted(image["image_id"] for image in images)


def test_a_job_killed_with_sigkill_resumes_at_once_and_captions_every_item_once(tmp_path, tiny_blip):
    data = tmp_path / "data"
    history_file = data / "history.json"
    extra = {"HISTORY_FILE": str(history_file), "JOB_CLAIM_SECONDS": "60"}
    session = requests.Session()  # the job's owner: its session cookie, signed with the shared SECRET_KEY
    with app_server("first", data, tiny_blip, extra) as started:
        base, process, _ = up(started)
        job_id = start_job(session, base)["job_id"]
        wait_for(session, base, job_id, partway, 60, process)
        kill(process)
    # What was done before the kill is on disk, each item's image with it, and the dead process holds claims.
    on_disk = json.loads(history_file.read_text(encoding="utf-8"))
    items = on_disk["jobs"][job_id]["items"]
    done = [item for item in items if item["state"] == "done"]
    assert 2 <= len(done) < TOTAL and on_disk["jobs"][job_id]["status"] == "running"
    assert all(on_disk["images"][item["image_id"]]["original_name"] == item["file_name"] for item in done)
    assert len(on_disk["images"]) == len(done)
    dead = {item["claimed_by"] for item in items if item["state"] == "claimed"}
    assert dead and all(f":{process.pid}:" in worker for worker in dead), dead

    with app_server("second", data, tiny_blip, extra) as started:
        base, process, log_path = up(started)
        restarted = time.monotonic()
        job = wait_for(session, base, job_id, finished, 60, process)
        # Well within JOB_CLAIM_SECONDS: the dead process's claims were given back at start, not left to run out.
        assert time.monotonic() - restarted < 45
        log = open(log_path, encoding="utf-8").read()
        assert "claimed by a process that is gone" in log and "Traceback" not in log, log
        listed = session.get(base + "/history?limit=200", timeout=TIMEOUT).json()
        assert_captioned_once(session, base, job_id, listed["images"])
        assert job["done"] == TOTAL and listed["total_images"] == TOTAL
        staged = data / "uploads" / "jobs" / job_id
        deadline = time.monotonic() + 10
        while staged.exists():  # removed by the runner just after the job's last result is kept
            assert time.monotonic() < deadline, f"the finished job's staged files are still there: {staged}"
            time.sleep(0.02)
    on_disk = json.loads(history_file.read_text(encoding="utf-8"))
    assert sorted(image["original_name"] for image in on_disk["images"].values()) == NAMES
    # The upload folder holds exactly the images' files: what the killed process stored and never kept is gone.
    assert stored_images(data / "uploads") == {image["filename"] for image in on_disk["images"].values()}


def claimed_by(engine: sa.Engine, job_id: str) -> dict[str, int]:
    """How many of a job's items each worker holds now, read from the database."""
    with engine.connect() as db:
        return dict(db.execute(sa.select(job_items.c.claimed_by, sa.func.count()).where(
            job_items.c.job_id == job_id, job_items.c.state == "claimed").group_by(job_items.c.claimed_by)).all())


def test_two_replicas_share_a_job_and_one_finishes_what_a_killed_one_held(tmp_path, tiny_blip, postgres_url):
    data = tmp_path / "data"
    extra = {"DATABASE_URL": postgres_url, "JOB_CLAIM_SECONDS": "3"}
    session = requests.Session()
    with ExitStack() as stack:
        engine = history_sql.make_engine(history_sql.database_url(postgres_url, str(tmp_path)))
        stack.callback(engine.dispose)
        started = [stack.enter_context(app_server(f"replica-{index}", data, tiny_blip, extra)) for index in range(2)]
        (first, victim, first_log), (second, survivor, second_log) = [up(replica) for replica in started]

        # 1. Both replicas caption items of one job posted to the first, each item once. A runner looks for work
        # every 2 s unless a job posted to its own process wakes it, so a one-image job posted to the second wakes
        # it now; once it has claimed that item it claims the first job's too (a fast machine could otherwise
        # finish them all in the first replica before the second looks).
        job_id = start_job(session, first)["job_id"]
        nudge = session.post(second + "/jobs", files=[("images", ("nudge.png", image_bytes(), "image/png"))],
                             timeout=60)
        assert nudge.status_code == 202, nudge.text
        nudge_id = nudge.json()["job_id"]
        wait_for(session, second, job_id, finished, 60, survivor)
        wait_for(session, second, nudge_id, finished, 60, survivor)
        assert session.delete(f"{first}/jobs/{nudge_id}", timeout=TIMEOUT).json() == {"deleted": nudge_id,
                                                                                      "images": 1}
        listed = session.get(second + "/history?limit=200", timeout=TIMEOUT).json()
        assert_captioned_once(session, second, job_id, listed["images"])
        assert listed["total_images"] == TOTAL
        kept = [kept_counts(first_log), kept_counts(second_log)]
        for counts, process in zip(kept, (victim, survivor)):
            assert len(counts) == 1 and next(iter(counts)).startswith(f"{socket.gethostname()}:{process.pid}:"), kept
            assert sum(counts.values()) >= 2, f"a replica kept none of the big job's items: {kept}"  # one: the nudge
        assert sum(sum(counts.values()) for counts in kept) == TOTAL + 1  # each item kept once, by one of them
        for image in listed["images"]:
            assert session.get(second + image["image_url"], timeout=TIMEOUT).status_code == 200
        assert session.delete(f"{second}/jobs/{job_id}", timeout=TIMEOUT).json() == {"deleted": job_id,
                                                                                    "images": TOTAL}

        # 2. The first replica is killed holding claims: once they run out (3 s) the second finishes them.
        job_id = start_job(session, first)["job_id"]
        mark = f"{socket.gethostname()}:{victim.pid}:"
        deadline = time.monotonic() + 60
        while not any(worker.startswith(mark) for worker in claimed_by(engine, job_id)):
            assert time.monotonic() < deadline and victim.poll() is None, "the first replica never claimed"
            time.sleep(0.01)
        kill(victim)
        held = sum(count for worker, count in claimed_by(engine, job_id).items() if worker.startswith(mark))
        assert held, "the killed replica held no claim"
        before = sum(kept_counts(second_log).values())
        wait_for(session, second, job_id, finished, 60, survivor)
        assert claimed_by(engine, job_id) == {}
        assert sum(kept_counts(second_log).values()) - before >= held
        listed = session.get(second + "/history?limit=200", timeout=TIMEOUT).json()
        assert_captioned_once(session, second, job_id, listed["images"])
        assert listed["total_images"] == TOTAL
        for image in listed["images"]:
            assert session.get(second + image["image_url"], timeout=TIMEOUT).status_code == 200
        for log_path in (first_log, second_log):
            assert "Traceback" not in open(log_path, encoding="utf-8").read(), log_path
