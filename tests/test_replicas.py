"""Replicas: app processes on one PostgreSQL database, one data folder and one SECRET_KEY serve the same users."""

import threading
from contextlib import ExitStack, contextmanager

import pytest
import requests

import servers
from conftest import image_bytes
from keys import fingerprint

KEYS = ["hf_replicaAAAAAAAA1111", "hf_replicaBBBBBBBB2222"]
pytestmark = pytest.mark.timeout(240)  # real processes


@contextmanager
def replica(name: str, data, database_url: str, tiny_blip, extra: dict | None = None):
    """`python app.py` on its own port, with the settings every replica shares."""
    port = servers.free_port()
    env = {"CAPTION_MODEL": tiny_blip["caption"], "VQA_MODEL": tiny_blip["vqa"], "PORT": str(port),
           "DATABASE_URL": database_url, "UPLOAD_FOLDER": str(data / "uploads"),
           "GENERATED_FOLDER": str(data / "uploads" / "generated"), "SECRET_KEY": "shared-by-the-replicas",
           "CAPTION_MAX_LENGTH": "8", "VQA_MAX_LENGTH": "4", **(extra or {})}
    process = servers.start([servers.PYTHON, "app.py"], env, str(data.parent / f"{name}.log"))
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        servers.stop(process)


@contextmanager
def replicas(count: int, data, database_url, tiny_blip, extra=None):
    with ExitStack() as stack:
        started = [stack.enter_context(replica(f"replica-{index}", data, database_url, tiny_blip, extra))
                   for index in range(count)]
        for base, process in started:
            servers.wait_until_up(base + "/healthz", process)
        yield started


def upload(session, base, name="a.png") -> requests.Response:
    return session.post(base + "/upload", files={"image": (name, image_bytes(), "image/png")}, timeout=60)


def test_an_image_uploaded_through_one_replica_is_answered_and_listed_through_the_other(tmp_path, tiny_blip,
                                                                                       postgres_url):
    with replicas(2, tmp_path / "data", postgres_url, tiny_blip) as [(first, _), (second, _)]:
        session = requests.Session()
        uploaded = upload(session, first).json()
        asked = session.post(second + "/question", json={"image_id": uploaded["image_id"], "question": "what?"},
                             timeout=60)
        assert asked.status_code == 200 and asked.json()["caption"] == uploaded["caption"]
        listed = session.get(second + "/history", timeout=10).json()
        assert [image["image_id"] for image in listed["images"]] == [uploaded["image_id"]]
        assert listed["images"][0]["questions"][0]["answer"] == asked.json()["answer"]
        assert session.get(second + uploaded["image_url"], timeout=10).status_code == 200
        assert session.delete(second + f"/images/{uploaded['image_id']}", timeout=10).status_code == 204
        assert session.get(first + f"/images/{uploaded['image_id']}", timeout=10).status_code == 404


def test_killing_a_replica_during_writes_loses_nothing_it_answered(tmp_path, tiny_blip, postgres_url):
    data = tmp_path / "data"
    with replicas(2, data, postgres_url, tiny_blip) as [(first, victim), (second, _)]:
        session = requests.Session()
        image_id = upload(session, second).json()["image_id"]
        answered: list[tuple[str, str]] = []  # (kind, what) for every 2xx
        stop = threading.Event()

        def keep_writing(worker: int):
            index = 0
            while not stop.is_set():
                index += 1
                try:
                    if index % 2:
                        response = upload(session, first, f"w{worker}-{index}.png")
                        what = response.json().get("image_id") if response.ok else None
                    else:
                        question = f"w{worker}-{index}?"
                        response = session.post(first + "/question", json={"image_id": image_id,
                                                                          "question": question}, timeout=60)
                        what = question
                except requests.RequestException:
                    return
                if response.ok:
                    answered.append(("image" if index % 2 else "question", what))

        writers = [threading.Thread(target=keep_writing, args=(worker,)) for worker in range(4)]
        for writer in writers:
            writer.start()
        while len(answered) < 12:
            threading.Event().wait(0.05)
        victim.kill()  # SIGKILL: no clean-up in the app
        victim.wait(10)
        stop.set()
        for writer in writers:
            writer.join(30)

        listed = session.get(second + "/history?limit=200", timeout=10).json()
        thread = session.get(second + f"/images/{image_id}", timeout=10).json()["questions"]
        kept_images = {image["image_id"] for image in listed["images"]}
        asked = {entry["question"] for entry in thread}
        for kind, what in answered:
            assert what in (kept_images if kind == "image" else asked), f"{kind} {what} answered 2xx, then lost"
        assert any(kind == "image" for kind, _ in answered) and any(kind == "question" for kind, _ in answered)
        for image in listed["images"]:
            assert session.get(second + image["image_url"], timeout=10).status_code == 200


def test_a_key_one_replica_rested_is_rested_by_the_other(tmp_path, tiny_blip, postgres_url, fake_api):
    fake_api.script = {KEYS[0]: [("429", {"Retry-After": "600"})]}
    extra = {"HF_API_KEYS": ",".join(KEYS), "HF_ROUTER_URL": fake_api.url, "HF_PROVIDER": "hf-inference",
             "SD_MODEL": "some/model"}
    with replicas(2, tmp_path / "data", postgres_url, tiny_blip, extra) as [(first, _), (second, _)]:
        made = requests.post(first + "/generate", json={"description": "a cat"}, timeout=60)
        assert made.status_code == 201 and fake_api.keys_used() == KEYS  # the first key's 429, then the second
        keys = requests.get(second + "/healthz", timeout=10).json()["keys"]
        assert keys[0]["fingerprint"] == fingerprint(KEYS[0]) and keys[0]["state"] == "cooling"
        assert 590 <= keys[0]["retry_in_seconds"] <= 600
        assert requests.post(second + "/generate", json={"description": "a dog"}, timeout=60).status_code == 201
        assert fake_api.keys_used()[2:] == [KEYS[1]]  # the other replica went straight to the second key
