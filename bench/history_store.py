"""`make bench-history`: what the history store costs as it grows, on each backend, and two replicas against one.

- JSON, SQLite and PostgreSQL (a throwaway server of its own, with PostgreSQL's durable defaults):
  the store's cost of one question (add_question, committed to disk) and of one history page of 50,
  at 1,000, 10,000 and 100,000 images with two questions each, 50 sessions; medians of many.
- Two gunicorn replicas against one, on one PostgreSQL database holding 10,000 images: requests/s
  that wrk (Debian's, a load generator in C) gets reading sessions' history pages and image records.
Prints the figures and writes its section of BENCHMARKS.md.
"""

import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from demo import random_blip  # noqa: E402
from history import open_store  # noqa: E402
from postgres import ThrowawayPostgres  # noqa: E402
from processes import free_port, stop, wait_until_healthy  # noqa: E402
from report import write_section  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
OWNERS = 50
TIMES = {"json": 15, "sqlite": 200, "postgresql": 200}
REPLICA_IMAGES = 10_000
CONNECTIONS = 8  # wrk's, shared among the replicas
SECONDS = 15
GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")


def image_id(index: int) -> str:
    return f"{index:08x}-0000-4000-8000-000000000000"


def record(index: int) -> dict:
    owner = f"owner{index % OWNERS}"
    return {"image_id": image_id(index), "owner": owner, "filename": image_id(index) + ".png",
            "original_name": f"photo-{index}.png", "mime_type": "image/png", "prompt": None,
            "caption": "a photography of a dog sitting on the grass next to a red car",
            "created_at": f"2026-11-{1 + index // 86_400:02d}T{index // 3600 % 24:02d}:{index // 60 % 60:02d}:"
                          f"{index % 60:02d}.000Z",  # one a second
            "questions": [{"question": "what color is the car?", "answer": "red",
                           "asked_at": "2026-11-25T10:01:00.000Z", "owner": owner}] * 2}


def fill(store, size: int) -> None:
    """size images, added as `flask history copy` adds them (in one write for JSON, in chunks for a database)."""
    store.merge(("images", record(index)) for index in range(size))


def measure(target: str, size: int, backend: str, root: str) -> dict:
    store = open_store(target, root)
    started = time.perf_counter()
    fill(store, size)
    filled = time.perf_counter() - started
    entry = {"question": "and the dog?", "answer": "brown", "asked_at": "2026-11-25T10:02:00.000Z", "owner": "owner1"}
    pick = random.Random(size)
    changes, pages = [], []
    for _ in range(TIMES[backend]):
        started = time.perf_counter()
        store.add_question(image_id(pick.randrange(size)), entry)
        changes.append(time.perf_counter() - started)
        started = time.perf_counter()
        page, total = store.list("images", "owner1", 50, 0)
        pages.append(time.perf_counter() - started)
        assert total == size // OWNERS and len(page) == min(50, total)
    store.close()
    return {"question_ms": statistics.median(changes) * 1000, "page_ms": statistics.median(pages) * 1000,
            "fill_s": filled}


def session_cookie(owner: str) -> str:
    """A session cookie the replicas accept (SECRET_KEY "bench"), for a session that owns images."""
    from app import create_app

    app = create_app({"SECRET_KEY": "bench"}, services=False)
    return app.session_interface.get_signing_serializer(app).dumps({"owner": owner})


def wrk_script(folder: str, owner_index: int) -> str:
    """A wrk script that alternates the session's history page and its image records."""
    images = [image_id(n) for n in range(owner_index, REPLICA_IMAGES, OWNERS)]
    paths = [path for one in images[:50] for path in ("/history?limit=20", f"/images/{one}")]
    path = os.path.join(folder, f"reads-{owner_index}.lua")
    with open(path, "w") as file:
        file.write("local paths = {" + ", ".join(f'"{p}"' for p in paths) + "}\n"
                   "local turn = 0\n"
                   "request = function()\n"
                   "  turn = turn + 1\n"
                   "  return wrk.format(\"GET\", paths[turn % #paths + 1])\n"
                   "end\n")
    return path


def requests_per_second(replica_count: int, database_url: str, models: dict, data: str) -> tuple[float, int]:
    """CONNECTIONS connections shared among the replicas (one wrk each, all at once): requests/s, and non-2xx."""
    env = {**os.environ, "CAPTION_MODEL": models["caption"], "VQA_MODEL": models["vqa"], "HF_HUB_OFFLINE": "1",
           "DATABASE_URL": database_url, "SECRET_KEY": "bench", "UPLOAD_FOLDER": os.path.join(data, "u"),
           "GENERATED_FOLDER": os.path.join(data, "g")}
    ports = [free_port() for _ in range(replica_count)]
    logs = [os.path.join(data, f"replica-{port}.log") for port in ports]
    processes = [subprocess.Popen([GUNICORN, "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread", "--threads",
                                   "16", "--keep-alive", "75", "app:app"], cwd=ROOT, env=env,
                                  stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
                 for port, log_path in zip(ports, logs)]
    try:
        for process, port, log_path in zip(processes, ports, logs):
            wait_until_healthy(process, port, 300, log_path)
        loads = [subprocess.Popen(["wrk", "-t1", f"-c{CONNECTIONS // replica_count}", f"-d{SECONDS}s",
                                   "-H", f"Cookie: session={session_cookie(f'owner{index}')}",
                                   "-s", wrk_script(data, index), f"http://127.0.0.1:{port}"],
                                  stdout=subprocess.PIPE, text=True) for index, port in enumerate(ports)]
        outputs = [load.communicate(timeout=SECONDS + 60)[0] for load in loads]
        rate = sum(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) for out in outputs)
        failed = sum(int(found.group(1)) for out in outputs
                     for found in [re.search(r"Non-2xx or 3xx responses: (\d+)", out)] if found)
        return rate, failed
    finally:
        for process in processes:
            stop(process)


def main() -> None:
    server = ThrowawayPostgres(durable=True).start()
    results = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            for size in SIZES:
                targets = {"json": os.path.join(folder, f"history-{size}.json"),
                           "sqlite": f"sqlite:///{folder}/history-{size}.db",
                           "postgresql": server.create_database()}
                for backend, target in targets.items():
                    print(f"{backend}, {size:,} images ...", flush=True)
                    results[(backend, size)] = measure(target, size, backend, folder)
                    print(f"  {results[(backend, size)]}", flush=True)
            database_url = server.create_database()
            store = open_store(database_url, folder)
            fill(store, REPLICA_IMAGES)
            store.close()
            models = random_blip.save_random_blip(os.path.join(folder, "tiny"))
            for count in (1, 2):
                print(f"{count} replica(s) ...", flush=True)
                results[("replicas", count)] = requests_per_second(count, database_url, models, folder)
                print(f"  {results[('replicas', count)]}", flush=True)
    finally:
        server.stop()
    report(results)


def report(results: dict) -> None:
    rows = []
    for backend in ("json", "sqlite", "postgresql"):
        for size in SIZES:
            r = results[(backend, size)]
            rows.append(f"| {backend} | {size:,} | {r['question_ms']:.2f} ms | {r['page_ms']:.2f} ms | "
                        f"{r['fill_s']:.1f} s |")
    ratios = []
    for backend in ("json", "sqlite", "postgresql"):
        small, large = results[(backend, SIZES[0])]["question_ms"], results[(backend, SIZES[-1])]["question_ms"]
        ratios.append(f"| {backend} | {large / small:.2f} | {large:.2f} ms |")
    (one, failed_one), (two, failed_two) = results[("replicas", 1)], results[("replicas", 2)]
    text = "\n".join([
        "## The history as it grows, and replicas: `make bench-history`",
        "",
        f"Written by `make bench-history` on {time.strftime('%Y-%m-%d')}. The store alone (no HTTP): images with two "
        f"questions each, {OWNERS} sessions; one question = add_question on a random image, committed (fsync for "
        "JSON and SQLite; PostgreSQL with its durable defaults, a throwaway server on this machine); one page = the "
        f"newest 50 images of one session with their threads and the session's total. Medians of {TIMES['json']} "
        f"(JSON) and {TIMES['sqlite']} (databases).",
        "",
        "| backend | images | one question | one history page of 50 | filling it (as history copy does) |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Target: with SQLite and PostgreSQL, one question at {SIZES[-1]:,} images within 2x of {SIZES[0]:,} and "
        "under 5 ms.",
        "",
        f"| backend | one question: {SIZES[-1]:,} / {SIZES[0]:,} images | at {SIZES[-1]:,} |",
        "| --- | ---: | ---: |",
        *ratios,
        "",
        f"Replicas: gunicorn (gthread, 16 threads) on the tiny models, one PostgreSQL database holding "
        f"{REPLICA_IMAGES:,} images, all on this machine's 2 cores; {CONNECTIONS} wrk connections shared among the "
        f"replicas (one wrk each, one session each, owning {REPLICA_IMAGES // OWNERS} images) alternating GET "
        f"/history?limit=20 and GET /images/<id> for {SECONDS} s.",
        "",
        "| replicas | requests/s | not 200 |",
        "| ---: | ---: | ---: |",
        f"| 1 | {one:.1f} | {failed_one} |",
        f"| 2 | {two:.1f} ({two / one:.2f}x) | {failed_two} |",
        "",
    ])
    print(text)
    write_section("history", text)


if __name__ == "__main__":
    main()
