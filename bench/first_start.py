"""`make bench-start`: a new user's first start, and one gunicorn worker against two.

- `make run` (serve.py) with the default hub ids, an empty model cache and a hub that cannot be
  reached: seconds until /healthz answers, and the lines the log holds by then;
- gunicorn with 1 and with 2 workers (WEB_CONCURRENCY) on the tiny BLIP models, then on the
  full-size BLIP-base architecture with random weights: questions per second from 8 clients.
Prints the figures and writes its section of BENCHMARKS.md.
"""

import io
import os
import subprocess
import sys
import tempfile
import threading
import time

import requests
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from demo import random_blip  # noqa: E402
from processes import free_port, stop, wait_until_healthy  # noqa: E402
from report import write_section  # noqa: E402

GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")
CLIENTS = 8
SECONDS = {"tiny": 15, "base": 40}


def first_start(data: str) -> dict:
    """serve.py with no weights and no hub: seconds to the first /healthz answer, and the log's lines then."""
    port = free_port()
    log_path = os.path.join(data, "first-start.log")
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "HF_HOME": os.path.join(data, "empty-cache"),
           "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_OFFLINE": "0", "PYTHONUNBUFFERED": "1",
           "UPLOAD_FOLDER": os.path.join(data, "start-uploads"), "HISTORY_FILE": os.path.join(data, "start.json")}
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "serve.py"], cwd=ROOT, env=env, stdout=open(log_path, "w"),
                               stderr=subprocess.STDOUT)
    try:
        while time.monotonic() - started < 300:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                if "models" in answer.json():  # gunicorn's answer, not nginx's while it starts
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.2)
        seconds = time.monotonic() - started
        lines = [line for line in open(log_path).read().splitlines() if line.strip()]
        errors = [line for line in lines if " ERROR " in line]
        process.send_signal(2)
        stopping = time.monotonic()
        process.wait(60)
        return {"seconds": seconds, "lines": len(lines), "errors": len(errors),
                "stop_seconds": time.monotonic() - stopping}
    finally:
        if process.poll() is None:
            stop(process)


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((320, 240), 40).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def questions_per_second(paths: dict, workers: int, seconds: float, data: str) -> float:
    """8 clients asking small questions about 4 images for `seconds`, against gunicorn with `workers` workers."""
    port = free_port()
    folder = tempfile.mkdtemp(dir=data)
    env = {**os.environ, "CAPTION_MODEL": paths["caption"], "VQA_MODEL": paths["vqa"], "HF_HUB_OFFLINE": "1",
           "WEB_CONCURRENCY": str(workers), "SECRET_KEY": "bench", "UPLOAD_FOLDER": os.path.join(folder, "u"),
           "GENERATED_FOLDER": os.path.join(folder, "g"), "HISTORY_FILE": os.path.join(folder, "h.json"),
           "VQA_MAX_LENGTH": "5", "CAPTION_MAX_LENGTH": "8", "CAPTION_MIN_LENGTH": "2"}
    log_path = os.path.join(folder, "log")
    process = subprocess.Popen([GUNICORN, "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread", "--threads",
                                "16", "--keep-alive", "75", "app:app"], cwd=ROOT, env=env,
                               stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, port, 600, log_path)
        picture = photo()
        ids = [requests.post(base + "/upload", files={"image": ("p.jpg", picture, "image/jpeg")},
                             timeout=600).json()["image_id"] for _ in range(4)]
        time.sleep(3)  # the background contexts of the uploads
        counts, stop_at = [0] * CLIENTS, time.monotonic() + seconds

        def client(index):
            session = requests.Session()
            while time.monotonic() < stop_at:
                answer = session.post(base + "/question", timeout=600,
                                      json={"question": "what is it?", "image_id": ids[index % len(ids)]})
                counts[index] += answer.status_code == 200

        threads = [threading.Thread(target=client, args=(index,)) for index in range(CLIENTS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts) / (time.monotonic() - started)
    finally:
        stop(process)


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as data:
        print("first start without weights or hub ...", flush=True)
        results["start"] = first_start(data)
        for size in ("tiny", "base"):
            if size == "base":
                print("building full-size BLIP-base checkpoints with random weights in bench-models/ (once) ...",
                      flush=True)
                paths = random_blip.save_random_blip(os.path.join(ROOT, "bench-models"), "base")
            else:
                paths = random_blip.save_random_blip(os.path.join(data, "tiny"))
            for workers in (1, 2):
                print(f"{size} models, {workers} worker(s) ...", flush=True)
                results[(size, workers)] = questions_per_second(paths, workers, SECONDS[size], data)
    report(results)


def report(results: dict) -> None:
    start = results["start"]
    rows = [f"| `make run`, no weights, hub unreachable: until /healthz answers | {start['seconds']:.1f} s | <= 45 s |",
            f"| the same: log lines by then ({start['errors']} ERROR lines, one a model) | {start['lines']} | <= 40 |",
            f"| the same: Ctrl-C until both processes stopped | {start['stop_seconds']:.1f} s | a few seconds |"]
    for size, name in (("tiny", "tiny models"), ("base", "BLIP-base size, random weights")):
        one, two = results[(size, 1)], results[(size, 2)]
        rows.append(f"| questions/s from {CLIENTS} clients, {name}: 1 worker, 2 workers | {one:.1f}, {two:.1f} "
                    f"(2/1 = {two / one:.2f}) | {'>= 0.7' if size == 'tiny' else ''} |")
    text = "\n".join([
        "## First start and workers: `make bench-start`",
        "",
        f"Written by `make bench-start` on {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores. The first start "
        "is serve.py with the default hub ids, an empty HF_HOME and HF_ENDPOINT on a closed port; the workers "
        "are gunicorn (gthread, 16 threads) with WEB_CONCURRENCY=1 and 2, 4 uploaded images, then "
        f"{SECONDS['tiny']} s (tiny) or {SECONDS['base']} s (base) of questions.",
        "",
        "| measure | figure | target |",
        "| --- | ---: | --- |",
        *rows,
        "",
    ])
    print(text)
    write_section("first-start", text)


if __name__ == "__main__":
    main()
