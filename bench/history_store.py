"""`make bench-history`: what the JSON history costs per change as it grows.

Times History.add_question (the whole file rewritten, fsync included) and one history page at
1,000, 10,000 and 20,000 images with short threads; medians of many. Prints the figures and
writes its section of BENCHMARKS.md.
"""

import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from history import History  # noqa: E402
from report import write_section  # noqa: E402

SIZES = (1_000, 10_000, 20_000)
TIMES = 20


def record(index: int) -> dict:
    image_id = f"{index:08x}-0000-4000-8000-000000000000"
    return {"image_id": image_id, "owner": f"owner{index % 50}", "filename": image_id + ".png",
            "mime_type": "image/png", "original_name": f"photo-{index}.png", "prompt": None,
            "caption": "a photography of a dog sitting on the grass next to a red car",
            "created_at": "2026-11-25T10:00:00.000Z",
            "questions": [{"question": "what color is the car?", "answer": "red",
                           "asked_at": "2026-11-25T10:01:00.000Z", "owner": f"owner{index % 50}"}] * 2}


def measure(size: int, folder: str) -> dict:
    path = os.path.join(folder, f"history-{size}.json")
    history = History(path)
    # Written in one go: as many add_image calls would each rewrite the whole file.
    history._write({"images": {r["image_id"]: r for r in map(record, range(size))}, "generations": {}})
    question = {"question": "and the dog?", "answer": "brown", "asked_at": "2026-11-25T10:02:00.000Z",
                "owner": "owner1"}
    changes, pages = [], []
    for index in range(TIMES):
        started = time.perf_counter()
        history.add_question(record(index * 7 % size)["image_id"], question)
        changes.append(time.perf_counter() - started)
        started = time.perf_counter()
        history.list("images", "owner1", 50, 0)
        pages.append(time.perf_counter() - started)
    return {"question_ms": statistics.median(changes) * 1000, "page_ms": statistics.median(pages) * 1000,
            "file_mb": os.path.getsize(path) / 2**20}


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        results = {size: measure(size, folder) for size in SIZES}
    rows = [f"| {size:,} | {r['file_mb']:.1f} MB | {r['question_ms']:.1f} ms | {r['page_ms']:.2f} ms |"
            for size, r in results.items()]
    text = "\n".join([
        "## The JSON history as it grows: `make bench-history`",
        "",
        f"Written by `make bench-history` on {time.strftime('%Y-%m-%d')}: History on a temporary folder, images with "
        f"two questions each, 50 sessions; medians of {TIMES}.",
        "",
        "| images | file | one question (the file rewritten, fsync) | one history page of 50 |",
        "| ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ])
    print(text)
    write_section("history", text)


if __name__ == "__main__":
    main()
