"""The benchmarks' servers as processes: a free port on 127.0.0.1, and stopping one."""

import socket
import subprocess
import time

import requests


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """Ask a server to stop; kill it if it has not within 30 s."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_until_healthy(process: subprocess.Popen, port: int, seconds: float, log_path: str) -> None:
    """Wait until the server on port answers /healthz with 200; stop the benchmark if it exits or never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server did not start: see {log_path}")
