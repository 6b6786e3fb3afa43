"""`make bench-limits`: the server under hostile and heavy use, as `make run` serves it (serve.py).

On the tiny BLIP models with random weights, measures:
- memory: peak RSS above idle while 4 clients upload 6000x6000 single-colour PNGs for FLOOD_SECONDS;
- background work: the most prepare jobs pending (/healthz) during and after 200 quick uploads;
- slow clients: /healthz and a small question while 20 clients send an upload at 10 bytes/s,
  through nginx (serve.py) and, for comparison, with gunicorn alone.
Prints the figures and writes its section of BENCHMARKS.md.
"""

import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from demo import random_blip  # noqa: E402
import settings  # noqa: E402
from processes import free_port, stop, wait_until_healthy  # noqa: E402
from report import write_section  # noqa: E402

FLOOD_SECONDS = 15
FLOOD_CLIENTS = 4
QUICK_UPLOADS = 200
SLOW_CLIENTS = 20
GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")


def png(size, color="teal") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def descendants(pid: int) -> list[int]:
    """The processes below pid (gunicorn's master and worker, nginx's master and worker)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    parent = int(file.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def memory_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as file:
        line = next(line for line in file if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def app_worker(server: subprocess.Popen) -> int:
    """The gunicorn worker: the process that holds the models (the largest below the server)."""
    return max(descendants(server.pid), key=lambda pid: memory_mb(pid, "VmRSS"))


def start(command: list[str], env: dict, port: int, log_path: str) -> subprocess.Popen:
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=open(log_path, "w"),
                               stderr=subprocess.STDOUT)
    wait_until_healthy(process, port, 120, log_path)
    return process


def upload(base: str, data: bytes, timeout: float = 120) -> requests.Response:
    return requests.post(base + "/upload", files={"image": ("a.png", data, "image/png")}, timeout=timeout)


def flood(base: str, worker: int) -> dict:
    """4 clients upload a 6000x6000 PNG again and again; the worker's RSS before and at its peak."""
    big = png((6000, 6000))
    upload(base, png((64, 48)))
    time.sleep(1)
    idle = memory_mb(worker, "VmRSS")
    statuses = []
    stop_at = time.monotonic() + FLOOD_SECONDS

    def client():
        while time.monotonic() < stop_at:
            statuses.append(upload(base, big).status_code)

    with ThreadPoolExecutor(FLOOD_CLIENTS) as pool:
        for future in [pool.submit(client) for _ in range(FLOOD_CLIENTS)]:
            future.result()
    return {"png_bytes": len(big), "idle_mb": idle, "peak_mb": memory_mb(worker, "VmHWM"),
            "uploads": len(statuses), "statuses": sorted(set(statuses))}


def quick_uploads(base: str) -> dict:
    """200 small uploads from 8 clients; the most background jobs /healthz showed, during and after."""
    data = png((64, 48), "olive")
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            seen.append(requests.get(base + "/healthz", timeout=30).json()["queue"]["background"])
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: upload(base, data).status_code, range(QUICK_UPLOADS)))
    done.set()
    watcher.join()
    queue = requests.get(base + "/healthz", timeout=30).json()["queue"]
    return {"uploads": len(statuses), "created": statuses.count(201), "most_pending": max(seen),
            "pending_after": queue["background"], "cap": queue["background_max"]}


def slow_client(port: int, stop_event: threading.Event) -> None:
    """An upload sent at 10 bytes/s until told to stop."""
    connection = socket.create_connection(("127.0.0.1", port))
    body = b"--x\r\n" + b"a" * 100_000
    connection.sendall((f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
                        "Content-Type: multipart/form-data; boundary=x\r\n\r\n").encode())
    try:
        for byte in body:
            if stop_event.wait(0.1):
                break
            connection.sendall(bytes([byte]))
    except OSError:
        pass
    finally:
        connection.close()


def timed(call) -> float | None:
    started = time.monotonic()
    try:
        call()
    except requests.RequestException:
        return None
    return time.monotonic() - started


def under_slow_clients(base: str, port: int) -> dict:
    """/healthz and a small question while 20 clients trickle uploads: medians, or None for no answer in 10 s."""
    session = requests.Session()
    image_id = session.post(base + "/upload", files={"image": ("a.png", png((64, 48)), "image/png")},
                            timeout=60).json()["image_id"]
    stop_event = threading.Event()
    clients = [threading.Thread(target=slow_client, args=(port, stop_event)) for _ in range(SLOW_CLIENTS)]
    for client in clients:
        client.start()
    time.sleep(2)  # all connected and sending
    health, questions = [], []
    for _ in range(5):
        health.append(timed(lambda: requests.get(base + "/healthz", timeout=10).raise_for_status()))
        asked = {"question": "what?", "image_id": image_id}
        questions.append(timed(lambda: session.post(base + "/question", json=asked, timeout=10).raise_for_status()))
    stop_event.set()
    for client in clients:
        client.join()

    def median(values):
        answered = [value for value in values if value is not None]
        return statistics.median(answered) if len(answered) == len(values) else None

    return {"healthz_s": median(health), "question_s": median(questions),
            "answered": f"{sum(v is not None for v in health + questions)}/{len(health) + len(questions)}"}


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as data:
        paths = random_blip.save_random_blip(os.path.join(data, "models"))
        env = {"CAPTION_MODEL": paths["caption"], "VQA_MODEL": paths["vqa"], "HF_HUB_OFFLINE": "1",
               "UPLOAD_FOLDER": os.path.join(data, "uploads"), "GENERATED_FOLDER": os.path.join(data, "generated"),
               "HISTORY_FILE": os.path.join(data, "history.json"), "SECRET_KEY": "bench", "HOST": "127.0.0.1"}
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        print("make run's server (serve.py: nginx and gunicorn) ...", flush=True)
        server = start([sys.executable, "serve.py"], {**env, "PORT": str(port)}, port, os.path.join(data, "serve.log"))
        try:
            worker = app_worker(server)
            print("  upload flood ...", flush=True)
            results["flood"] = flood(base, worker)
            print("  quick uploads ...", flush=True)
            results["quick"] = quick_uploads(base)
            print("  slow clients ...", flush=True)
            results["slow_nginx"] = under_slow_clients(base, port)
        finally:
            stop(server)
        print("gunicorn alone, for comparison ...", flush=True)
        port = free_port()
        command = [GUNICORN, "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread", "--threads", "16", "app:app"]
        server = start(command, env, port, os.path.join(data, "gunicorn.log"))
        try:
            results["slow_gunicorn"] = under_slow_clients(f"http://127.0.0.1:{port}", port)
        finally:
            stop(server)
    report(results)


def seconds(value: float | None) -> str:
    return "no answer within 10 s" if value is None else f"{value:.3f} s"


def report(results: dict) -> None:
    flood, quick = results["flood"], results["quick"]
    above = flood["peak_mb"] - flood["idle_mb"]
    nginx, alone = results["slow_nginx"], results["slow_gunicorn"]
    text = "\n".join([
        "## Hostile and heavy use: `make bench-limits`",
        "",
        f"Written by `make bench-limits` on {time.strftime('%Y-%m-%d')}, against the server as `make run` starts it "
        "(serve.py: nginx in front of gunicorn, gthread, 16 threads) on the tiny BLIP models with random weights; "
        f"MAX_DECODES={settings.DEFAULTS['MAX_DECODES']}, MAX_BACKGROUND={settings.DEFAULTS['MAX_BACKGROUND']}.",
        "",
        "| measure | figure | target |",
        "| --- | ---: | --- |",
        f"| peak RSS of the app's worker above idle, {FLOOD_CLIENTS} clients uploading 6000x6000 single-colour PNGs "
        f"({flood['png_bytes'] // 1024} KB each) for {FLOOD_SECONDS} s | {above:.0f} MB (idle {flood['idle_mb']:.0f}, "
        f"peak {flood['peak_mb']:.0f}; {flood['uploads']} uploads, statuses {flood['statuses']}) | <= 1536 MB |",
        f"| most background jobs pending during {quick['uploads']} quick uploads from 8 clients | "
        f"{quick['most_pending']} ({quick['pending_after']} right after; {quick['created']} stored) | "
        f"<= {quick['cap']} (MAX_BACKGROUND) |",
        f"| /healthz, median of 5, while {SLOW_CLIENTS} clients send uploads at 10 bytes/s | "
        f"{seconds(nginx['healthz_s'])} | <= 5 s |",
        f"| a small question, median of 5, the same | {seconds(nginx['question_s'])} | <= 5 s |",
        f"| the same two with gunicorn alone (no nginx), for comparison | {seconds(alone['healthz_s'])}, "
        f"{seconds(alone['question_s'])} ({alone['answered']} answered) | |",
        "",
    ])
    print(text)
    write_section("limits", text)


if __name__ == "__main__":
    main()
