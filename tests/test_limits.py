"""Memory stays bounded: few full-size decodes at once, no pixels waiting in queues. Figures: bench/hostile_use.py."""

import io
import threading
import time

import numpy
from PIL import Image

import images
from conftest import image_bytes


class CountedSlots(threading.BoundedSemaphore):
    """The decode slots, counting who has asked for one."""

    def __init__(self, value):
        super().__init__(value)
        self.asked = 0

    def acquire(self, *args, **kwargs):
        self.asked += 1
        return super().acquire(*args, **kwargs)

    __enter__ = acquire


def wait_for(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        threading.Event().wait(0.01)


def test_at_most_max_decodes_uploads_decode_at_once(make_app, monkeypatch):
    app = make_app(MAX_DECODES=2)
    slots = app.extensions["decoding"] = CountedSlots(2)
    inside, most, release, lock = [0], [0], threading.Event(), threading.Lock()
    real_read = images.read_image

    def held_read(*args, **kwargs):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        release.wait(30)
        with lock:
            inside[0] -= 1
        return real_read(*args, **kwargs)

    monkeypatch.setattr(images, "read_image", held_read)
    statuses = []

    def upload():
        client = app.test_client()
        statuses.append(client.post("/upload", data={"image": (io.BytesIO(image_bytes()), "a.png")}).status_code)

    uploaders = [threading.Thread(target=upload) for _ in range(5)]
    for uploader in uploaders:
        uploader.start()
    wait_for(lambda: slots.asked == 5 and inside[0] == 2)  # all five arrived: two decode, three wait
    assert most[0] == 2
    release.set()
    for uploader in uploaders:
        uploader.join(30)
    assert statuses == [201] * 5 and most[0] == 2


def test_a_waiting_caption_holds_the_model_input_not_the_image(make_app, tiny_models):
    captioner, answerer = tiny_models
    app = make_app(captioner, answerer)
    batcher = app.extensions["models"].batcher
    seen = []
    real_submit = batcher.submit

    def recording_submit(run, group, payload, **kwargs):
        seen.append((group, payload))
        return real_submit(run, group, payload, **kwargs)

    batcher.submit = recording_submit
    big = image_bytes("PNG", size=(3000, 2000), color=(10, 200, 30))
    response = app.test_client().post("/upload", data={"image": (io.BytesIO(big), "big.png")})
    assert response.status_code == 201
    (caption_payload,) = [payload for group, payload in seen if group[0] == "caption"]
    model_input, _ = caption_payload
    # NumPy: the request's thread computes nothing with torch (models.in_passing_thread says why)
    assert isinstance(model_input, numpy.ndarray) and model_input.shape == (1, 3, 32, 32)
    (context_payload,) = [payload for group, payload in seen if group[0] == "context"]
    image_id, load = context_payload
    assert image_id == response.get_json()["image_id"]
    closure = [cell.cell_contents for cell in load.__closure__ or ()]
    assert not any(isinstance(value, Image.Image) for value in closure)  # a path to the stored file, no pixels
    assert load().size == (3000, 2000)


def test_healthz_shows_the_background_queue_and_its_cap(make_app):
    queue = make_app(MAX_BACKGROUND=5).test_client().get("/healthz").get_json()["queue"]
    assert queue["background"] == 0 and queue["background_max"] == 5
