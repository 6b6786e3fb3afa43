import base64
import io
import json
import logging
import os
import stat
import threading

import pytest
from PIL import Image

from app import create_app, instance_secret_key
from conftest import FakeAnswerer, FakeCaptioner, image_bytes, stored_files
from models import UnavailableModel


def upload(client, data=None, name="photo.png", **form):
    data = image_bytes() if data is None else data
    return client.post("/upload", data={"image": (io.BytesIO(data), name), **form},
                       content_type="multipart/form-data")


# The whole flow on the tiny BLIP models.

def test_upload_captions_and_stores_the_image(client, app, data_dir):
    response = upload(client, image_bytes("JPEG", size=(64, 40)), name="../../My Photo.jpg")
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) >= {"image_id", "caption", "image", "mime_type", "image_url", "created_at"}
    assert isinstance(body["caption"], str)
    assert body["mime_type"] == "image/jpeg"
    assert body["original_name"] == "My Photo.jpg"
    stored = data_dir / "uploads" / f"{body['image_id']}.jpg"
    assert base64.b64decode(body["image"]) == stored.read_bytes()
    assert Image.open(stored).size == (64, 40)
    served = client.get(body["image_url"])
    assert served.status_code == 200 and served.mimetype == "image/jpeg"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert served.data == stored.read_bytes()


def test_upload_with_a_prompt_keeps_the_prefix(client):
    body = upload(client, prompt="a photography of").get_json()
    assert body["caption"].startswith("a photography of")
    assert body["prompt"] == "a photography of"


def test_question_answers_and_keeps_the_thread(client):
    image_id = upload(client).get_json()["image_id"]
    first = client.post("/question", data={"question": "what is it?", "image_id": image_id})
    second = client.post("/question", json={"question": "  what color?  ", "image_id": image_id})
    assert first.status_code == 200 and second.status_code == 200
    body = second.get_json()
    assert body["image_id"] == image_id and body["question"] == "what color?"
    assert isinstance(body["answer"], str) and isinstance(body["caption"], str)
    assert [entry["question"] for entry in body["history"]] == ["what is it?", "what color?"]
    assert set(body["history"][0]) == {"question", "answer", "asked_at"}
    record = client.get(f"/images/{image_id}").get_json()
    assert record["questions"] == body["history"]


def test_history_lists_the_sessions_images_newest_first(client):
    ids = [upload(client).get_json()["image_id"] for _ in range(3)]
    body = client.get("/history").get_json()
    assert [image["image_id"] for image in body["images"]] == ids[::-1]
    assert body["total_images"] == 3 and body["generations"] == []
    page = client.get("/history?limit=1&offset=1").get_json()
    assert [image["image_id"] for image in page["images"]] == [ids[1]]
    assert "owner" not in body["images"][0]


def test_history_is_per_session(app):
    alice, bob = app.test_client(), app.test_client()
    upload(alice)
    assert len(alice.get("/history").get_json()["images"]) == 1
    assert bob.get("/history").get_json()["images"] == []


def test_a_new_app_over_the_same_folders_sees_the_same_history(make_app, tiny_models):
    first = make_app(*tiny_models).test_client()
    image_id = upload(first).get_json()["image_id"]
    first.post("/question", data={"question": "why?", "image_id": image_id})
    cookie = first.get_cookie("session").value
    restarted = make_app(*tiny_models).test_client()
    restarted.set_cookie("session", cookie)
    images = restarted.get("/history").get_json()["images"]
    assert [image["image_id"] for image in images] == [image_id]
    assert images[0]["questions"][0]["question"] == "why?"


# Image handling through the route, with fakes that record what the models saw.

@pytest.mark.parametrize("fmt, mode", [("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("PNG", "LA"),
                                       ("JPEG", "CMYK"), ("JPEG", "L")])
def test_every_mode_reaches_the_model_as_rgb(make_app, fmt, mode):
    captioner = FakeCaptioner()
    client = make_app(captioner=captioner).test_client()
    response = upload(client, image_bytes(fmt, mode, (30, 20)), name="x." + fmt.lower())
    assert response.status_code == 201
    assert captioner.calls == [("RGB", (30, 20), None)]


def test_exif_rotated_jpeg_is_stored_upright(make_app, data_dir):
    exif = Image.Exif()
    exif[0x0112] = 8
    buffer = io.BytesIO()
    Image.new("RGB", (60, 20), "red").save(buffer, "JPEG", exif=exif)
    body = upload(make_app().test_client(), buffer.getvalue(), name="rotated.jpg").get_json()
    assert Image.open(data_dir / "uploads" / f"{body['image_id']}.jpg").size == (20, 60)


def test_question_sees_the_stored_image(make_app):
    answerer = FakeAnswerer()
    client = make_app(answerer=answerer).test_client()
    image_id = upload(client, image_bytes(size=(33, 17))).get_json()["image_id"]
    client.post("/question", data={"question": "how many?", "image_id": image_id})
    assert answerer.calls == [("RGB", (33, 17), "how many?")]


# Errors: the right status, the JSON shape, and nothing left on disk.

def big_header_png():
    from test_images import png_header_only

    return png_header_only(20000, 20000)


@pytest.mark.parametrize(
    "data, name, status, code",
    [
        (b"hello, I am text", "fake.png", 400, "not_an_image"),
        (image_bytes("GIF", "P"), "anim.gif", 400, "unsupported_image_format"),
        (image_bytes("GIF", "P"), "anim.png", 400, "unsupported_image_format"),
        (image_bytes("PNG", size=(64, 64))[:-40], "cut.png", 400, "damaged_image"),
        (b"", "empty.png", 400, "empty_file"),
        (big_header_png(), "huge.png", 413, "image_too_large"),
        (b"\x89PNG" + b"\0" * (17 * 1024 * 1024), "big.png", 413, "file_too_large"),
    ],
    ids=["text-as-png", "gif-name", "gif-as-png", "truncated", "empty", "20000x20000", "17MB"],
)
def test_bad_uploads_are_refused_and_leave_nothing(make_app, data_dir, data, name, status, code):
    captioner = FakeCaptioner()
    client = make_app(captioner=captioner).test_client()
    response = upload(client, data, name=name)
    assert response.status_code == status
    assert response.get_json()["code"] == code
    assert response.get_json()["error"]
    assert captioner.calls == []
    assert stored_files(data_dir) == []


@pytest.mark.parametrize(
    "form, code",
    [({}, "missing_image"), ({"prompt": "x" * 201}, "prompt_too_long")],
)
def test_upload_field_errors(make_app, data_dir, form, code):
    client = make_app().test_client()
    if code == "prompt_too_long":
        response = upload(client, **form)
    else:
        response = client.post("/upload", data=form, content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json()["code"] == code
    assert stored_files(data_dir) == []


@pytest.mark.parametrize(
    "payload, status, code",
    [
        ({"image_id": "IMAGE"}, 400, "missing_question"),
        ({"question": "   ", "image_id": "IMAGE"}, 400, "missing_question"),
        ({"question": "x" * 501, "image_id": "IMAGE"}, 400, "question_too_long"),
        ({"question": 42, "image_id": "IMAGE"}, 400, "invalid_question"),
        ({"question": "why?"}, 400, "missing_image_id"),
        ({"question": "why?", "image_id": "no-such-image"}, 404, "image_not_found"),
    ],
)
def test_question_errors(make_app, data_dir, payload, status, code):
    answerer = FakeAnswerer()
    client = make_app(answerer=answerer).test_client()
    image_id = upload(client).get_json()["image_id"]
    payload = {key: image_id if value == "IMAGE" else value for key, value in payload.items()}
    before = (data_dir / "history.json").read_bytes()
    response = client.post("/question", json=payload)
    assert response.status_code == status and response.get_json()["code"] == code
    assert answerer.calls == []
    assert (data_dir / "history.json").read_bytes() == before


def test_question_body_that_is_not_a_json_object(make_app):
    client = make_app().test_client()
    response = client.post("/question", data="[1, 2", content_type="application/json")
    assert response.status_code == 400 and response.get_json()["code"] == "invalid_json"


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=ten", "offset=-1"])
def test_history_paging_errors(make_app, query):
    response = make_app().test_client().get(f"/history?{query}")
    assert response.status_code == 400 and response.get_json()["code"].startswith("invalid_")


@pytest.mark.parametrize(
    "method, path, status, code",
    [
        ("get", "/images/unknown", 404, "image_not_found"),
        ("get", "/nowhere", 404, "not_found"),
        ("get", "/upload", 405, "method_not_allowed"),
        ("put", "/history", 405, "method_not_allowed"),
        ("get", "/uploads/../history.json", 404, "not_found"),
        ("get", "/uploads/%2e%2e%2fhistory.json", 404, "not_found"),
        ("get", "/uploads/nothing.png", 404, "file_not_found"),
    ],
)
def test_http_errors_are_json(make_app, method, path, status, code):
    response = getattr(make_app().test_client(), method)(path)
    assert response.status_code == status
    assert response.is_json and response.get_json()["code"] == code and response.get_json()["error"]


def test_an_unexpected_error_is_logged_and_hidden(make_app, data_dir, caplog):
    class BrokenCaptioner(FakeCaptioner):
        def caption_batch(self, images, prompt=None):
            raise RuntimeError("secret internals")

    client = make_app(captioner=BrokenCaptioner()).test_client()
    with caplog.at_level(logging.ERROR):
        response = upload(client)
    assert response.status_code == 500 and response.get_json()["code"] == "internal_error"
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    assert any("secret internals" in str(record.exc_info) for record in caplog.records)
    assert stored_files(data_dir) == []


def test_a_failed_history_write_removes_the_stored_image(make_app, data_dir, monkeypatch):
    app = make_app()

    def refuse(record):
        raise OSError("disk full")

    monkeypatch.setattr(app.extensions["history"], "add_image", refuse)
    response = upload(app.test_client())
    assert response.status_code == 500
    assert stored_files(data_dir) == []


# Models that failed to load.

def test_unavailable_models_answer_503_with_the_fix(make_app, data_dir):
    captioner = UnavailableModel("Salesforce/blip-image-captioning-base",
                                 "the model could not be loaded: point CAPTION_MODEL at a local copy")
    client = make_app(captioner=captioner).test_client()
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.get_json()["models"]["captioner"] == {
        "name": "Salesforce/blip-image-captioning-base", "ready": False, "error": captioner.message}
    assert health.get_json()["models"]["answerer"]["ready"] is True
    response = upload(client)
    assert response.status_code == 503
    assert response.get_json() == {"error": captioner.message, "code": "model_unavailable"}
    assert stored_files(data_dir) == []


def test_healthz_ready(client):
    body = client.get("/healthz").get_json()
    assert body["status"] == "ok" and body["demo"] is False
    assert all(model["ready"] for model in body["models"].values())


def test_demo_mode_says_so(make_app):
    client = make_app(DEMO=True).test_client()
    assert "random weights" in client.get("/healthz").get_json()["notice"]
    assert "random weights" in client.get("/").get_data(as_text=True)


def test_create_app_loads_no_real_model_when_given_both(make_app, monkeypatch):
    import app as app_module

    def refuse(*args):
        raise AssertionError("real models were loaded")

    monkeypatch.setattr(app_module, "load_models", refuse)
    make_app()


# Sessions and the secret key.

def test_secret_key_is_made_once_with_mode_0600(tmp_path):
    key = instance_secret_key(str(tmp_path))
    assert len(key) == 64
    assert stat.S_IMODE(os.stat(tmp_path / "secret_key").st_mode) == 0o600
    assert instance_secret_key(str(tmp_path)) == key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret_key"]


def test_sessions_survive_a_restart_with_the_instance_key(tmp_path, monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    config = {"UPLOAD_FOLDER": str(tmp_path / "u"), "GENERATED_FOLDER": str(tmp_path / "g"),
              "HISTORY_FILE": str(tmp_path / "h.json")}

    def build():
        app = create_app(config, captioner=FakeCaptioner(), answerer=FakeAnswerer())
        app.instance_path = str(tmp_path / "instance")
        app.secret_key = instance_secret_key(app.instance_path)
        return app

    first = build().test_client()
    upload(first)
    cookie = first.get_cookie("session").value
    second = build().test_client()
    second.set_cookie("session", cookie)
    assert len(second.get("/history").get_json()["images"]) == 1


# Concurrency: 8 threads uploading and asking at once.

def test_eight_threads_upload_and_ask_at_once(app, data_dir):
    errors, ids = [], []

    def work():
        client = app.test_client()
        try:
            response = upload(client)
            assert response.status_code == 201, response.get_json()
            image_id = response.get_json()["image_id"]
            for question in ("one?", "two?"):
                answer = client.post("/question", data={"question": question, "image_id": image_id})
                assert answer.status_code == 200, answer.get_json()
            ids.append(image_id)
        except AssertionError as error:
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [] and len(ids) == 8
    data = json.loads((data_dir / "history.json").read_text())
    assert set(data["images"]) == set(ids)
    assert all([q["question"] for q in record["questions"]] == ["one?", "two?"]
               for record in data["images"].values())


# The models' queue, seen through HTTP.

class HeldCaptioner(FakeCaptioner):
    """Holds the model worker inside a batch until released."""

    def __init__(self):
        super().__init__()
        self.inside, self.release = threading.Event(), threading.Event()

    def caption_batch(self, images, prompt=None):
        self.inside.set()
        self.release.wait(30)
        return super().caption_batch(images, prompt)


def test_a_full_model_queue_answers_503_with_retry_after_and_stores_nothing(make_app, data_dir):
    captioner = HeldCaptioner()
    app = make_app(captioner=captioner, MAX_QUEUE=1)
    holder = threading.Thread(target=lambda: upload(app.test_client()))
    holder.start()
    assert captioner.inside.wait(30)
    queued = threading.Thread(target=lambda: upload(app.test_client()))
    queued.start()
    while app.extensions["models"].batcher.waiting() < 1:
        threading.Event().wait(0.01)
    response = upload(app.test_client())
    assert response.status_code == 503 and response.get_json()["code"] == "model_busy"
    assert int(response.headers["Retry-After"]) >= 1
    captioner.release.set()
    holder.join(30)
    queued.join(30)
    assert len(captioner.calls) == 2
    assert len(json.loads((data_dir / "history.json").read_text())["images"]) == 2
    assert len(stored_files(data_dir / "uploads")) == 2


def test_a_request_that_waited_too_long_answers_504_and_stores_nothing(make_app, data_dir):
    captioner = HeldCaptioner()
    response = upload(make_app(captioner=captioner, MODEL_TIMEOUT=0).test_client())
    assert response.status_code == 504 and response.get_json()["code"] == "model_timeout"
    captioner.release.set()
    assert stored_files(data_dir) == []


def test_healthz_shows_the_queue_and_the_cache(client):
    queue = client.get("/healthz").get_json()["queue"]
    assert set(queue) == {"queued", "queue_max", "background", "background_max", "bulk", "cached_images", "cache_mb",
                          "cache_max_mb"}
    assert queue["cache_max_mb"] == 256
