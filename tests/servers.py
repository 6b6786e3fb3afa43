"""Starting the app as a real server process on 127.0.0.1, bounded in time."""

import os
import socket
import subprocess
import sys
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command: list[str], env: dict, log_path: str) -> subprocess.Popen:
    """Start a server command in the project folder, its output to log_path."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **env}
    log = open(log_path, "w")
    return subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)


def wait_for_log(log_path: str, text: str, process: subprocess.Popen, seconds: float = 120) -> str:
    """Wait until the server's log contains text; fail if it exits or the time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        content = open(log_path).read()
        if text in content:
            return content
        if process.poll() is not None:
            raise AssertionError(f"server exited ({process.returncode}):\n{content}")
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in the log after {seconds} s:\n{open(log_path).read()}")


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    """Wait until the server answers at url."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited ({process.returncode})")
        try:
            requests.get(url, timeout=2)
            return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or a worker still loading
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def wait_until_ready(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    """Wait until url answers 200 (a proxy in front may answer before the app does)."""
    deadline = time.monotonic() + seconds
    wait_until_up(url, process, seconds)
    while requests.get(url, timeout=10).status_code != 200:
        if time.monotonic() > deadline or process.poll() is not None:
            raise AssertionError(f"{url} did not answer 200 within {seconds} s")
        time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(20)


PYTHON = sys.executable
GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")


class Serving:
    """An app served over real HTTP on 127.0.0.1 by werkzeug's threaded server, in this process."""

    def __init__(self, app):
        import threading

        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
