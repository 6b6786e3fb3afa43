"""`make bench-chat`: a chat's later turns through /v1/chat/completions against the same questions through /question.

A chat client sends the whole conversation at every turn, the image included; the app finds the image it kept at
the first turn by the SHA-256 of its bytes and answers from its cached question context, so a later turn should
cost what a /question about an uploaded image costs (target: within 1.2x). Full-size BLIP-base architecture with
random weights (bench-models/, built by `make bench-speed`, or built here once), fp32 on the CPU, in one process
through Flask's test client (AUTH off, one cookie session owning both images); the two ways alternate, medians.
Prints the figures and writes its section of BENCHMARKS.md.
"""

import base64
import io
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the app's own modules

from app import create_app  # noqa: E402
from bench.report import write_section  # noqa: E402
from bench.speed import GENERATION, QUESTIONS, model_paths, photo  # noqa: E402

ROUNDS = 8


def idle(service) -> None:
    """Until the models' worker has nothing queued, background work included (a person reading the answer)."""
    while service.status()["background"] or service.status()["queued"]:
        time.sleep(0.1)
    time.sleep(0.5)  # the last background job may still be running


def chat(client, service, picture: bytes, turns: list[str]) -> list[float]:
    """A conversation about one image, turn by turn as a chat client sends it, a person reading each answer
    before the next turn; the seconds of each later turn."""
    url = "data:image/png;base64," + base64.b64encode(picture).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "Describe this image."},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    seconds = []
    for index, question in enumerate(["Describe this image.", *turns]):
        if index:
            messages.append({"role": "user", "content": question})
            idle(service)
        started = time.perf_counter()
        answer = client.post("/v1/chat/completions", json={"model": "image-assistant", "messages": messages})
        if index:
            seconds.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.get_json()
        messages.append({"role": "assistant", "content": answer.get_json()["choices"][0]["message"]["content"]})
    return seconds


def main() -> None:
    paths, weights = model_paths()
    with tempfile.TemporaryDirectory() as data:
        os.environ.update({**GENERATION, "CAPTION_MODEL": paths["caption"], "VQA_MODEL": paths["vqa"],
                           "HF_HUB_OFFLINE": "1", "DEVICE": "cpu", "SECRET_KEY": "bench",
                           "UPLOAD_FOLDER": os.path.join(data, "uploads"), "HISTORY_FILE": os.path.join(data, "h.json"),
                           "GENERATED_FOLDER": os.path.join(data, "generated")})
        app = create_app()
        client = app.test_client()
        service = app.extensions["models"]
        uploaded = client.post("/upload", data={"image": (io.BytesIO(photo(1)), "p.png")}).get_json()
        chat(client, service, photo(2), QUESTIONS[:1])  # warm-up of both ways
        turns, questions = [], []
        for round_ in range(ROUNDS):
            asked = [QUESTIONS[(round_ + i) % len(QUESTIONS)] for i in range(2)]
            turns += chat(client, service, photo(10 + round_), asked)  # turns 2 and 3 of a 3-turn chat
            for question in asked:
                idle(service)
                started = time.perf_counter()
                client.post("/question", json={"image_id": uploaded["image_id"], "question": question})
                questions.append(time.perf_counter() - started)
    chat_p50, question_p50 = statistics.median(turns), statistics.median(questions)
    text = "\n".join([
        "## A chat's later turns: `make bench-chat`",
        "",
        f"Written by `make bench-chat` on {time.strftime('%Y-%m-%d')}: {weights}, fp32 on the CPU, in one process",
        f"through Flask's test client; {ROUNDS} three-turn chats (a description, then two questions, the image sent",
        "again at every turn, each turn once the worker is idle, as after a person read the answer), against the",
        "same questions through /question about an uploaded image, asked the same way; medians.",
        "",
        "| measure | seconds |",
        "| --- | ---: |",
        f"| /question, p50 | {question_p50:.3f} |",
        f"| /v1/chat/completions, turns 2 and 3, p50 | {chat_p50:.3f} |",
        f"| ratio (target <= 1.2) | {chat_p50 / question_p50:.2f} |",
        "",
    ])
    print(text)
    write_section("chat", text)


if __name__ == "__main__":
    main()
