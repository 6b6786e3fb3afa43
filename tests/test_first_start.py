"""A new user's first hour: a start without weights or network, the demo's own data, workers sharing cores."""

import io
import os
import signal
import threading
import time

import pytest
import requests

import servers
import settings
from conftest import image_bytes
from test_app import upload
from test_server import data_env


def lines(path) -> list[str]:
    return [line for line in open(path).read().splitlines() if line.strip()]


def test_make_run_without_weights_or_network_answers_at_once_and_says_what_to_do(tmp_path):
    """serve.py, as `make run` starts it: hub ids, an empty cache, a hub that does not answer."""
    port = servers.free_port()
    env = {**data_env(tmp_path, port), "HF_HOME": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "0",
           "HF_ENDPOINT": f"http://127.0.0.1:{servers.free_port()}",  # nothing listens there
           "CAPTION_MODEL": "Salesforce/blip-image-captioning-base", "VQA_MODEL": "Salesforce/blip-vqa-base"}
    log_path = tmp_path / "run.log"
    process = servers.start([servers.PYTHON, "serve.py"], env, str(log_path))
    try:
        servers.wait_until_up(f"http://127.0.0.1:{port}/healthz", process, seconds=45)
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        while health.status_code != 503 or "models" not in health.json():  # nginx answers before gunicorn does
            health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        models = health.json()["models"]
        for role, model in (("captioner", "Salesforce/blip-image-captioning-base"),
                            ("answerer", "Salesforce/blip-vqa-base")):
            assert models[role]["ready"] is False
            assert f"hf download {model}" in models[role]["error"] and "make demo" in models[role]["error"]
        log = lines(log_path)
        errors = [line for line in log if " ERROR " in line]
        assert len(errors) == 2 and "CAPTION_MODEL" in errors[0] and "VQA_MODEL" in errors[1]
        assert not any("Retrying" in line for line in log)
        assert len(log) <= 40, "\n".join(log)
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0  # Ctrl-C stops nginx and gunicorn
    finally:
        servers.stop(process)


def test_two_workers_share_the_cores(tmp_path, tiny_blip):
    port = servers.free_port()
    env = {**data_env(tmp_path, port), "CAPTION_MODEL": tiny_blip["caption"], "VQA_MODEL": tiny_blip["vqa"],
           "WEB_CONCURRENCY": "2"}
    log_path = tmp_path / "gunicorn.log"
    command = [servers.GUNICORN, "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread", "--threads", "4",
               "app:app"]
    process = servers.start(command, env, str(log_path))
    try:
        threads = max(1, (os.cpu_count() or 1) // 2)
        expected = f"2 worker(s) on {os.cpu_count()} cores: {threads} torch thread(s) in this one"
        deadline = time.monotonic() + 120
        while open(log_path).read().count("loaded Answerer") < 2:  # both workers have their models
            assert time.monotonic() < deadline and process.poll() is None, open(log_path).read()
            threading.Event().wait(0.2)
        assert open(log_path).read().count(expected) == 2, open(log_path).read()
        servers.wait_until_ready(f"http://127.0.0.1:{port}/healthz", process)
        for _ in range(4):
            response = requests.post(f"http://127.0.0.1:{port}/upload", timeout=60,
                                     files={"image": ("a.png", io.BytesIO(image_bytes()), "image/png")})
            assert response.status_code == 201
    finally:
        servers.stop(process)


def test_make_demo_keeps_its_data_apart(tmp_path):
    port = servers.free_port()
    demo_data = tmp_path / "demo-data"
    env = {"PORT": str(port), "HOST": "127.0.0.1", "DEMO_MODELS": str(tmp_path / "demo-models"),
           "DEMO_DATA": str(demo_data), "CAPTION_MAX_LENGTH": "8", "CAPTION_MIN_LENGTH": "2"}
    real_history = os.path.join(servers.ROOT, "history.json")
    before = os.stat(real_history).st_mtime_ns if os.path.exists(real_history) else None
    process = servers.start([servers.PYTHON, "demo/serve.py"], env, str(tmp_path / "demo.log"))
    try:
        base = f"http://127.0.0.1:{port}"
        servers.wait_until_up(base + "/healthz", process)
        files = {"image": ("a.png", io.BytesIO(image_bytes()), "image/png")}
        body = requests.post(base + "/upload", files=files, timeout=60).json()
        assert (demo_data / "uploads" / os.path.basename(body["image_url"])).exists()
        assert body["image_id"] in (demo_data / "history.json").read_text()
        assert (demo_data / "secret_key").exists()
        after = os.stat(real_history).st_mtime_ns if os.path.exists(real_history) else None
        assert after == before  # the real history is untouched
        assert str(demo_data) in open(tmp_path / "demo.log").read()
    finally:
        servers.stop(process)


def test_relative_model_settings_are_taken_from_the_app_folder(tmp_path):
    (tmp_path / "weights" / "caption").mkdir(parents=True)
    assert settings.model_source("weights/caption", str(tmp_path)) == (str(tmp_path / "weights" / "caption"), True)
    assert settings.model_source("./nowhere", str(tmp_path)) == (str(tmp_path / "nowhere"), True)
    assert settings.model_source("Salesforce/blip-vqa-base", str(tmp_path)) == ("Salesforce/blip-vqa-base", False)
    assert settings.model_source(str(tmp_path / "weights"), "/elsewhere") == (str(tmp_path / "weights"), True)


def test_a_missing_local_model_folder_says_no_such_folder(make_app, tmp_path):
    import models
    from app import load_models

    config = {**make_app().config, "CAPTION_MODEL": "./not-here", "ROOT": str(tmp_path), "WEB_CONCURRENCY": 1}
    captioner, _ = load_models(config, True, False)
    assert isinstance(captioner, models.UnavailableModel)
    assert "no such folder" in captioner.message and str(tmp_path / "not-here") in captioner.message


def test_the_models_load_in_a_thread_that_ends(make_app, tiny_blip, monkeypatch):
    import threading

    import models
    from app import load_models

    loaded_in = []
    real_load = models.load
    monkeypatch.setattr(models, "load", lambda *args, **kwargs: loaded_in.append(threading.current_thread())
                        or real_load(*args, **kwargs))
    config = {**make_app().config, "CAPTION_MODEL": tiny_blip["caption"], "VQA_MODEL": tiny_blip["vqa"],
              "WEB_CONCURRENCY": 1, "FEW_ROW_LINEAR": "off"}
    captioner, answerer = load_models(config, True, True)
    assert captioner.ready and answerer.ready
    # Not this thread, and none left alive: the OpenMP threads the loading's math started end with it.
    assert len(loaded_in) == 2 and threading.current_thread() not in loaded_in
    assert not any(thread.is_alive() for thread in loaded_in)


def test_a_relative_keys_file_is_taken_from_the_app_folder(make_app):
    app = make_app(HF_API_KEYS_FILE="keys.txt")
    assert app.config["HF_API_KEYS_FILE"] == os.path.join(app.root_path, "keys.txt")


@pytest.mark.parametrize("query, has_image", [("", True), ("?include_image=1", True), ("?include_image=0", False)])
def test_the_upload_answer_can_leave_the_image_out(make_app, query, has_image):
    client = make_app().test_client()
    response = client.post("/upload" + query, data={"image": (io.BytesIO(image_bytes()), "a.png")})
    assert response.status_code == 201 and ("image" in response.get_json()) == has_image
    assert response.get_json()["image_url"]


def test_include_image_takes_only_yes_or_no(make_app, data_dir):
    response = make_app().test_client().post("/upload?include_image=maybe",
                                             data={"image": (io.BytesIO(image_bytes()), "a.png")})
    assert response.status_code == 400 and response.get_json()["code"] == "invalid_include_image"


def test_an_empty_file_is_called_empty(make_app):
    response = upload(make_app().test_client(), b"")
    assert response.status_code == 400 and response.get_json()["code"] == "empty_file"
    assert "empty" in response.get_json()["error"]
