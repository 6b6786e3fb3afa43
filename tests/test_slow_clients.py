"""`make run` (serve.py: gunicorn behind nginx) keeps answering while slow clients hold connections."""

import io
import os
import shutil
import socket

import pytest
import requests

import servers
from conftest import image_bytes
from test_server import data_env

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SLOW_CLIENTS = 20

if not os.path.exists(NGINX):
    if os.environ.get("CI") == "true":
        raise RuntimeError("nginx is missing: `make test` installs Debian's nginx package")
    pytest.skip("nginx is not installed (make test installs it)", allow_module_level=True)


@pytest.fixture
def served(tmp_path, tiny_blip):
    port = servers.free_port()
    env = {**data_env(tmp_path, port), "CAPTION_MODEL": tiny_blip["caption"], "VQA_MODEL": tiny_blip["vqa"]}
    log_path = str(tmp_path / "serve.log")
    process = servers.start([servers.PYTHON, "serve.py"], env, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        servers.wait_until_ready(base + "/healthz", process)
        yield base, port, process, log_path
    finally:
        servers.stop(process)


def stalled_upload(port: int) -> socket.socket:
    """A client that sends an upload's headers and its first 10 bytes, then nothing more."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 100000\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n\r\n")
    connection.sendall(head.encode() + b"--x\r\nConte")
    return connection


def test_twenty_stalled_uploads_do_not_stop_the_others(served):
    base, port, process, _ = served
    stalled = [stalled_upload(port) for _ in range(SLOW_CLIENTS)]
    try:
        # Each request below would wait forever if the stalled ones held gunicorn's 16 threads.
        assert requests.get(base + "/healthz", timeout=20).status_code == 200
        session = requests.Session()
        files = {"image": ("a.png", io.BytesIO(image_bytes()), "image/png")}
        uploaded = session.post(base + "/upload", files=files, timeout=30)
        assert uploaded.status_code == 201
        asked = session.post(base + "/question", json={"question": "what?", "image_id": uploaded.json()["image_id"]},
                             timeout=30)
        assert asked.status_code == 200 and isinstance(asked.json()["answer"], str)
    finally:
        for connection in stalled:
            connection.close()
    assert process.poll() is None


def test_nginx_errors_are_json_too(served):
    base, *_ = served
    response = requests.post(base + "/upload", data=b"\0" * (40 * 2**20), timeout=30,
                             headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 413
    assert response.json()["code"] == "file_too_large" and "smaller image" in response.json()["error"]


def test_the_host_and_origin_checks_see_the_clients_host(served):
    base, port, *_ = served
    evil = requests.get(base + "/", headers={"Host": f"evil.example:{port}"}, timeout=10)
    assert evil.status_code == 400 and evil.json()["code"] == "untrusted_host"
    same = requests.post(base + "/upload", headers={"Origin": base}, timeout=30,
                         files={"image": ("a.png", io.BytesIO(image_bytes()), "image/png")})
    assert same.status_code == 201


def test_ctrl_c_stops_nginx_and_gunicorn(served):
    base, port, process, log_path = served
    process.send_signal(2)  # SIGINT, as Ctrl-C sends
    assert process.wait(20) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(base + "/healthz", timeout=5)
