"""`make bench-auth`: what authentication adds to a request, GET /history with an API key against AUTH=off.

One account with 50 images (two questions each) in its history; the same store read by two apps in one process:
one with AUTH=on, asked with `Authorization: Bearer <key>` (and, for comparison, with a sign-in session's cookie),
one with AUTH=off, asked with a cookie session that owns the same 50 images, so that both answer the same JSON
(checked). Requests alternate between the apps in a shuffled order, after a warm-up; medians of ROUNDS each, on the
JSON file and on SQLite.

Measured in-process, through Flask's test client, not against a server on 127.0.0.1: everything AUTH=on adds
(Flask-Login's request_loader, the key's hash and its two store lookups, the account check, Flask-Limiter's
count and headers) runs inside the WSGI app, which the test client drives whole (before/after-request hooks,
session cookie, JSON); a server adds only what both sides pay alike (sockets, HTTP parsing, thread hand-offs),
whose scheduling noise on a small machine is larger than the difference measured here. RATE_LIMIT is set far
above what the benchmark sends, so that the limiter counts every request (its cost is measured) but refuses none.
Prints the figures and writes its section of BENCHMARKS.md (target: under 2 ms extra).
"""

import os
import random
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # the app's own modules

from accounts import Accounts  # noqa: E402
from app import create_app  # noqa: E402
from history import open_store  # noqa: E402
from bench.report import write_section  # noqa: E402

IMAGES = 50
ROUNDS = 3000
WARM_UP = 200
LOOKUPS = 5000
PASSWORD = "correct horse battery staple"
TARGET_MS = 2.0


class NoModel:
    """Stands in for the BLIP models, which GET /history never calls."""


def image_record(index: int, owner: str) -> dict:
    image_id = f"{index:08x}-0000-4000-8000-000000000000"
    return {"image_id": image_id, "owner": owner, "filename": image_id + ".png", "original_name": f"photo-{index}.png",
            "mime_type": "image/png", "prompt": None,
            "caption": "a photography of a dog sitting on the grass next to a red car",
            "created_at": f"2026-11-25T10:{index // 60:02d}:{index % 60:02d}.000Z",
            "questions": [{"question": "what color is the car?", "answer": "red",
                           "asked_at": "2026-11-25T11:00:00.000Z", "owner": owner}] * 2}


def store_target(folder: str, backend: str) -> str:
    """Where the backend keeps the history in folder: a JSON file's path or an SQLite URL."""
    return f"sqlite:///{folder}/history.db" if backend == "sqlite" else os.path.join(folder, "history.json")


def build(folder: str, backend: str, auth: str):
    """An app over the backend's store in folder, with AUTH=auth, models stubbed."""
    config = {"AUTH": auth, "HOST": "127.0.0.1", "SECRET_KEY": "bench", "RATE_LIMIT": "100000000/minute",
              "UPLOAD_FOLDER": os.path.join(folder, "uploads"), "GENERATED_FOLDER": os.path.join(folder, "generated"),
              "HISTORY_FILE": os.path.join(folder, "history.json"),
              "DATABASE_URL": store_target(folder, backend) if backend == "sqlite" else ""}
    return create_app(config, captioner=NoModel(), answerer=NoModel())


def clients(folder: str, backend: str) -> tuple[dict, float]:
    """The three ways of asking for the same history: {name: (client, headers)}; and one key lookup's median, s."""
    store = open_store(store_target(folder, backend), ROOT)  # the account and images first, as the CLI would
    maker = Accounts(store)
    user = maker.create_user("ada", PASSWORD)
    _, key = maker.create_key(user["user_id"], "bench")
    store.merge(("images", image_record(index, user["user_id"])) for index in range(IMAGES))
    store.close()
    on, off = build(folder, backend, "on"), build(folder, backend, "off")
    identity = on.extensions["accounts"]

    by_key = on.test_client()
    by_session = on.test_client()
    signed_in = by_session.post("/login", json={"username": "ada", "password": PASSWORD})
    assert signed_in.status_code == 200, signed_in.get_json()
    by_cookie = off.test_client()
    with by_cookie.session_transaction() as session:
        session["owner"] = user["user_id"]  # the AUTH=off session that made the same images
        session.permanent = True
    ways = {"AUTH=off, cookie session": (by_cookie, {}),
            "AUTH=on, API key": (by_key, {"Authorization": "Bearer " + key}),
            "AUTH=on, sign-in session": (by_session, {})}

    bodies = []
    for client, headers in ways.values():
        answer = client.get("/history", headers=headers)
        assert answer.status_code == 200, answer.get_json()
        bodies.append(answer.get_json())
    assert bodies[0]["total_images"] == IMAGES and len(bodies[0]["images"]) == IMAGES
    assert bodies[0] == bodies[1] == bodies[2], "the three ways must answer the same history"

    lookups = []
    for _ in range(LOOKUPS):
        started = time.perf_counter()
        found = identity.user_for_key(key)
        lookups.append(time.perf_counter() - started)
        assert found is not None
    return ways, statistics.median(lookups)


def measure(ways: dict) -> dict:
    """Median seconds of GET /history for each way, its requests interleaved with the others' in shuffled order."""
    times = {name: [] for name in ways}
    order = list(ways)
    shuffle = random.Random(7)
    for round_number in range(WARM_UP + ROUNDS):
        shuffle.shuffle(order)
        for name in order:
            client, headers = ways[name]
            started = time.perf_counter()
            answer = client.get("/history", headers=headers)
            elapsed = time.perf_counter() - started
            if answer.status_code != 200:
                raise SystemExit(f"{name}: GET /history answered {answer.status_code} {answer.get_json()}")
            if round_number >= WARM_UP:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def cpu() -> str:
    with open("/proc/cpuinfo") as file:
        return next((line.split(":", 1)[1].strip() for line in file if line.startswith("model name")), "?")


def main() -> None:
    results = {}
    for backend in ("json", "sqlite"):
        with tempfile.TemporaryDirectory() as folder:
            print(f"{backend}: {IMAGES} images, {ROUNDS} rounds ...", flush=True)
            ways, lookup = clients(folder, backend)
            medians = measure(ways)
            results[backend] = (medians, lookup)
            off = medians["AUTH=off, cookie session"]
            for name, median in medians.items():
                print(f"  {name}: median {median * 1000:.3f} ms ({(median - off) * 1000:+.3f} ms, "
                      f"{median / off:.2f}x)", flush=True)
            print(f"  the key's lookup alone (Accounts.user_for_key): median {lookup * 1e6:.1f} µs", flush=True)
    report(results)


def report(results: dict) -> None:
    rows = []
    for backend, (medians, lookup) in results.items():
        off = medians["AUTH=off, cookie session"]
        key = medians["AUTH=on, API key"]
        session = medians["AUTH=on, sign-in session"]
        rows.append(f"| {backend} | {off * 1000:.3f} ms | {key * 1000:.3f} ms | **{(key - off) * 1000:+.3f} ms** "
                    f"({key / off:.2f}x) | {session * 1000:.3f} ms ({(session - off) * 1000:+.3f} ms, "
                    f"{session / off:.2f}x) | {lookup * 1e6:.0f} µs |")
    worst = max((medians["AUTH=on, API key"] - medians["AUTH=off, cookie session"]) * 1000
                for medians, _ in results.values())
    text = "\n".join([
        "## What authentication adds to a request: `make bench-auth`",
        "",
        f"Written by `make bench-auth` on {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({cpu()}). GET "
        f"/history (one page: the account's {IMAGES} images, two questions each) through Flask's test client, "
        f"in-process, so that only the app's own work is timed; medians of {ROUNDS:,} requests each, the three ways "
        "interleaved in a shuffled order after a warm-up of "
        f"{WARM_UP}, all answering the same JSON. AUTH=off asks with the cookie session that owns the images; "
        "AUTH=on with an API key (`Authorization: Bearer`), and with a sign-in session's cookie for comparison. "
        "AUTH=on includes Flask-Limiter's count of every request (RATE_LIMIT set high enough to refuse none).",
        "",
        "| store | AUTH=off | AUTH=on, API key | extra for the key | AUTH=on, sign-in session | the key's lookup "
        "alone |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Target: under {TARGET_MS:g} ms extra for a key-authenticated request: "
        f"{'met' if worst < TARGET_MS else 'NOT met'} (at most {worst:+.3f} ms).",
        "",
    ])
    print(text)
    write_section("auth", text)


if __name__ == "__main__":
    main()
