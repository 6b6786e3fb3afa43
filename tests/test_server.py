"""The real entry points: `python app.py` and `gunicorn app:app`, as processes on 127.0.0.1."""

import io

import requests

import servers
from conftest import image_bytes, stored_files


def data_env(tmp_path, port):
    return {
        "PORT": str(port), "HOST": "127.0.0.1", "SECRET_KEY": "server-test",
        "UPLOAD_FOLDER": str(tmp_path / "uploads"), "GENERATED_FOLDER": str(tmp_path / "generated"),
        "HISTORY_FILE": str(tmp_path / "history.json"),
        "CAPTION_MAX_LENGTH": "8", "CAPTION_MIN_LENGTH": "2", "VQA_MAX_LENGTH": "5",
    }


def test_python_app_starts_without_a_model_and_says_which(tmp_path, tiny_blip):
    port = servers.free_port()
    missing = str(tmp_path / "no-such-model")
    env = {**data_env(tmp_path, port), "CAPTION_MODEL": missing, "VQA_MODEL": tiny_blip["vqa"]}
    log_path = str(tmp_path / "server.log")
    process = servers.start([servers.PYTHON, "app.py"], env, log_path)
    try:
        base = f"http://127.0.0.1:{port}"
        servers.wait_until_up(base + "/healthz", process)
        health = requests.get(base + "/healthz", timeout=10)
        assert health.status_code == 503
        models = health.json()["models"]
        assert models["captioner"]["ready"] is False and "CAPTION_MODEL" in models["captioner"]["error"]
        assert models["answerer"]["ready"] is True
        files = {"image": ("a.png", io.BytesIO(image_bytes()), "image/png")}
        refused = requests.post(base + "/upload", files=files, timeout=10)
        assert refused.status_code == 503 and refused.json()["code"] == "model_unavailable"
        errors = [line for line in open(log_path) if "ERROR" in line]
        assert len(errors) == 1 and missing in errors[0] and "CAPTION_MODEL" in errors[0]
    finally:
        servers.stop(process)


def test_gunicorn_loads_both_models_before_any_request(tmp_path, tiny_blip):
    port = servers.free_port()
    env = {**data_env(tmp_path, port), "CAPTION_MODEL": tiny_blip["caption"], "VQA_MODEL": tiny_blip["vqa"]}
    log_path = str(tmp_path / "gunicorn.log")
    command = [servers.GUNICORN, "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread", "--threads", "4",
               "app:app"]
    process = servers.start(command, env, log_path)
    try:
        # No request has been sent yet: the log can only show the models if they load at start.
        log = servers.wait_for_log(log_path, "loaded Answerer", process)
        assert "loaded Captioner" in log
        base = f"http://127.0.0.1:{port}"
        servers.wait_until_up(base + "/healthz", process)
        assert requests.get(base + "/healthz", timeout=10).status_code == 200
        session = requests.Session()
        files = {"image": ("a.jpg", io.BytesIO(image_bytes("JPEG")), "image/jpeg")}
        uploaded = session.post(base + "/upload", files=files, timeout=60)
        assert uploaded.status_code == 201, uploaded.text
        asked = session.post(base + "/question", timeout=60,
                             json={"question": "what?", "image_id": uploaded.json()["image_id"]})
        assert asked.status_code == 200 and isinstance(asked.json()["answer"], str)
        assert [image["image_id"] for image in session.get(base + "/history", timeout=10).json()["images"]] == [
            uploaded.json()["image_id"]]
    finally:
        servers.stop(process)


def test_make_demo_serves_tiny_models_and_says_so(tmp_path):
    port = servers.free_port()
    env = {**data_env(tmp_path, port), "DEMO_MODELS": str(tmp_path / "demo-models")}
    process = servers.start([servers.PYTHON, "demo/serve.py"], env, str(tmp_path / "demo.log"))
    try:
        base = f"http://127.0.0.1:{port}"
        servers.wait_until_up(base + "/healthz", process)
        health = requests.get(base + "/healthz", timeout=10).json()
        assert health["status"] == "ok" and health["demo"] is True and "random weights" in health["notice"]
        assert "random weights" in requests.get(base + "/", timeout=10).text
        files = {"image": ("a.png", io.BytesIO(image_bytes()), "image/png")}
        assert requests.post(base + "/upload", files=files, timeout=60).status_code == 201
    finally:
        servers.stop(process)


def test_a_client_that_hangs_up_has_its_request_taken_out_of_the_queue(make_app, data_dir):
    import socket
    import threading

    from werkzeug.serving import make_server

    from test_app import HeldCaptioner

    captioner = HeldCaptioner()
    app = make_app(captioner=captioner)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        files = {"image": ("a.png", image_bytes(), "image/png")}
        holder = threading.Thread(target=lambda: requests.post(base + "/upload", files=files, timeout=60))
        holder.start()
        assert captioner.inside.wait(30)
        body = requests.Request("POST", base + "/upload", files=files).prepare()
        leaving = socket.create_connection(("127.0.0.1", server.server_port))
        head = f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body.body)}\r\n"
        head += f"Content-Type: {body.headers['Content-Type']}\r\n\r\n"
        leaving.sendall(head.encode() + body.body)
        batcher = app.extensions["models"].batcher
        for _ in range(200):  # until the request is queued behind the held one
            if batcher.waiting() == 1:
                break
            threading.Event().wait(0.02)
        assert batcher.waiting() == 1
        leaving.close()
        for _ in range(200):  # until the server notices, within its 0.1 s polling
            if batcher.waiting() == 0:
                break
            threading.Event().wait(0.02)
        assert batcher.waiting() == 0
        captioner.release.set()
        holder.join(30)
        assert len(captioner.calls) == 1  # the departed client's image was never captioned
        assert len(stored_files(data_dir / "uploads")) == 1
    finally:
        server.shutdown()
