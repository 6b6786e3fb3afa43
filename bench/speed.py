"""`make bench-speed`: this app against the plain transformers baseline, both as servers on 127.0.0.1, in one run.

Uses the full-size BLIP-base architecture with random weights (same shapes and cost as the real
checkpoints; built once into bench-models/), or the real weights when CAPTION_MODEL and VQA_MODEL
name them. The number of generated tokens is fixed (min = max length) so both do the same work.
Prints the figures and the ratios ours/baseline, and writes its section of BENCHMARKS.md.
"""

import io
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the app's own modules (models, random_blip)

from processes import free_port  # noqa: E402
from report import write_section  # noqa: E402  (bench/ is this script's folder, first on the path)
GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")
GENERATION = {"CAPTION_NUM_BEAMS": "3", "CAPTION_MIN_LENGTH": "20", "CAPTION_MAX_LENGTH": "20",
              "VQA_NUM_BEAMS": "3", "VQA_MIN_LENGTH": "5", "VQA_MAX_LENGTH": "5"}
QUESTIONS = ["what color is the car?", "how many people are in the picture?", "is it sunny?",
             "what is on the table next to the window?", "where is the dog?", "what is the man holding?",
             "is there a tree?", "what time of day is it in this photo?"]
UPLOADS = 8
FIRST_QUESTIONS = 5
FOLLOW_UPS = 10
QUESTIONS_PER_CLIENT = 4
UPLOADS_PER_CLIENT = 2
CLIENTS = (1, 4, 8)


def photo(seed: int) -> bytes:
    """A synthetic 640x480 photo-like PNG: a gradient sky, ground and a few shapes."""
    rng = random.Random(seed)
    image = Image.new("RGB", (640, 480))
    draw = ImageDraw.Draw(image)
    top, bottom = [rng.randrange(256) for _ in range(3)], [rng.randrange(256) for _ in range(3)]
    for y in range(480):
        draw.line([(0, y), (640, y)], fill=tuple(t + (b - t) * y // 480 for t, b in zip(top, bottom)))
    for _ in range(6):
        x, y = rng.randrange(560), rng.randrange(400)
        box = (x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 150))
        color = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered) + 0.5) - 1))]


class Client:
    """One benchmark client over HTTP, with its own session."""

    def __init__(self, base: str):
        self.base, self.session = base, requests.Session()

    def upload(self, data: bytes) -> tuple[dict, float]:
        started = time.perf_counter()
        response = self.session.post(self.base + "/upload", files={"image": ("photo.png", data, "image/png")},
                                     timeout=600)
        response.raise_for_status()
        return response.json(), time.perf_counter() - started

    def ask(self, image_id: str, question: str) -> tuple[str, float]:
        started = time.perf_counter()
        response = self.session.post(self.base + "/question", json={"image_id": image_id, "question": question},
                                     timeout=600)
        response.raise_for_status()
        return response.json()["answer"], time.perf_counter() - started

    def wait_idle(self) -> None:
        """Until the server has nothing queued, background work included."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            queue = self.session.get(self.base + "/healthz", timeout=30).json()["queue"]
            if queue["queued"] == 0 and queue["background"] == 0:
                time.sleep(0.5)  # the last background job may still be running
                return
            time.sleep(0.2)


def in_parallel(count: int, work) -> float:
    """Run work(index) on count threads at once; the seconds it took."""
    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(work, range(count)))
    return time.perf_counter() - started


def measure(base: str, pictures: list[bytes]) -> dict:
    """Every figure for one server."""
    client = Client(base)
    first, _ = client.upload(pictures[-1])  # warm-up
    client.ask(first["image_id"], QUESTIONS[0])
    client.wait_idle()
    figures, texts = {}, {"captions": [], "answers": []}

    latencies = []
    for picture in pictures[:UPLOADS]:
        body, seconds = client.upload(picture)
        latencies.append(seconds)
        texts["captions"].append(body["caption"])
    figures["upload"] = latencies
    client.wait_idle()

    latencies = []
    for index in range(FIRST_QUESTIONS):
        body, _ = client.upload(pictures[index])
        time.sleep(2)  # a person reading the caption
        _, seconds = client.ask(body["image_id"], QUESTIONS[index])
        latencies.append(seconds)
        client.wait_idle()
    figures["first_question"] = latencies

    body, _ = client.upload(pictures[0])
    client.ask(body["image_id"], "what is this?")
    client.wait_idle()
    latencies = []
    for index in range(FOLLOW_UPS):
        answer, seconds = client.ask(body["image_id"], QUESTIONS[index % len(QUESTIONS)])
        latencies.append(seconds)
        texts["answers"].append(answer)
    figures["follow_up"] = latencies

    image_ids = [client.upload(picture)[0]["image_id"] for picture in pictures[:4]]
    client.wait_idle()
    for count in CLIENTS:
        clients = [Client(base) for _ in range(count)]

        def ask_many(index):
            for turn in range(QUESTIONS_PER_CLIENT):
                clients[index].ask(image_ids[(index + turn) % 4], QUESTIONS[(index * 3 + turn) % len(QUESTIONS)])

        figures[f"questions_per_second_{count}"] = count * QUESTIONS_PER_CLIENT / in_parallel(count, ask_many)
        client.wait_idle()
    for count in CLIENTS:
        clients = [Client(base) for _ in range(count)]

        def upload_many(index):
            for turn in range(UPLOADS_PER_CLIENT):
                clients[index].upload(pictures[(index * UPLOADS_PER_CLIENT + turn) % len(pictures)])

        figures[f"captions_per_second_{count}"] = count * UPLOADS_PER_CLIENT / in_parallel(count, upload_many)
        client.wait_idle()
    figures["texts"] = texts
    return figures


def status_field(pid: str, name: str) -> str:
    with open(f"/proc/{pid}/status") as file:
        return next(line.split(":", 1)[1].strip() for line in file if line.startswith(name + ":"))


def workers(master: subprocess.Popen) -> list[str]:
    """The gunicorn master's worker processes."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if status_field(pid, "PPid") == str(master.pid):
                found.append(pid)
        except (OSError, StopIteration):
            continue  # gone meanwhile
    return found


def peak_memory_mb(pids: list[str]) -> float:
    """The peak resident memory (VmHWM) of the given processes, in MB."""
    return max(int(status_field(pid, "VmHWM").split()[0]) for pid in pids) / 1024


def serve(target: str, env: dict, log_path: str, port: int) -> subprocess.Popen:
    command = [GUNICORN, "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread", "--threads", "16",
               "--timeout", "600", "--keep-alive", "75", target]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=open(log_path, "w"),
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            return process
        except (requests.ConnectionError, requests.Timeout):  # still loading the models
            time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"{target} did not start within 600 s: see {log_path}")


def fast_mode(paths: dict, pictures: list[bytes]) -> dict:
    """bf16 against fp32 in-process: the speed-up and how often the tokens agree."""
    import torch

    import models

    report = {"native_bf16": models.cpu_has_fast_bf16()}
    images = [Image.open(io.BytesIO(picture)).convert("RGB") for picture in pictures[:3]]
    from transformers import BlipForQuestionAnswering, BlipProcessor

    settings = dict(num_beams=int(GENERATION["VQA_NUM_BEAMS"]), min_length=int(GENERATION["VQA_MIN_LENGTH"]),
                    max_length=int(GENERATION["VQA_MAX_LENGTH"]))
    answers, seconds = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = BlipForQuestionAnswering.from_pretrained(paths["vqa"], dtype=dtype).eval()
        answerer = models.Answerer(model, BlipProcessor.from_pretrained(paths["vqa"]), generation=settings)
        answerer.answer(images[0], QUESTIONS[0])
        started = time.perf_counter()
        answers[name] = [answerer.answer(image, question) for image in images for question in QUESTIONS[:4]]
        seconds[name] = time.perf_counter() - started
        del model, answerer
    report["speedup"] = seconds["fp32"] / seconds["bf16"]
    report["equal"] = sum(a == b for a, b in zip(answers["fp32"], answers["bf16"]))
    report["total"] = len(answers["fp32"])
    return report


def machine() -> dict:
    import torch
    import transformers

    with open("/proc/cpuinfo") as file:
        info = file.read()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line for line in info.splitlines() if line.startswith("flags")), "").split())
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    library = re.search(r"- (Intel\(R\) oneAPI Math Kernel Library Version [^ ]+|OpenBLAS [^ ,]+)", config)
    return {"cpu": model, "cores": os.cpu_count(), "flags": " ".join(f for f in wanted if f in flags) or "none",
            "blas": f"{blas.group(1) if blas else '?'}" + (f" ({library.group(1)})" if library else ""),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "transformers": transformers.__version__, "python": platform.python_version(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)}


def model_paths() -> tuple[dict, str]:
    if os.environ.get("CAPTION_MODEL") and os.environ.get("VQA_MODEL"):
        return {"caption": os.environ["CAPTION_MODEL"], "vqa": os.environ["VQA_MODEL"]}, "real checkpoints"
    from demo import random_blip

    print("building full-size BLIP-base checkpoints with random weights in bench-models/ (once) ...", flush=True)
    return random_blip.save_random_blip(os.path.join(ROOT, "bench-models"), "base"), \
        "full-size BLIP-base architecture, random weights"


def main() -> None:
    paths, weights = model_paths()
    pictures = [photo(seed) for seed in range(12)]
    env = {**GENERATION, "CAPTION_MODEL": paths["caption"], "VQA_MODEL": paths["vqa"], "HF_HUB_OFFLINE": "1",
           "DEVICE": "cpu", "FAST_MODE": "0"}
    results = {}
    logs = os.path.join(ROOT, "bench-models")
    with tempfile.TemporaryDirectory() as data:
        env.update(UPLOAD_FOLDER=os.path.join(data, "uploads"), GENERATED_FOLDER=os.path.join(data, "generated"),
                   HISTORY_FILE=os.path.join(data, "history.json"), SECRET_KEY="bench")
        for name, target in (("baseline", "bench.baseline:create_baseline_app()"), ("app", "app:app")):
            print(f"measuring {name} ...", flush=True)
            port = free_port()
            server = serve(target, env, os.path.join(logs, f"{name}.log"), port)
            try:
                pids = workers(server)
                results[name] = measure(f"http://127.0.0.1:{port}", pictures)
                if workers(server) != pids:
                    raise SystemExit(f"the {name} server's worker was replaced during the run: see its log in {logs}")
                results[name]["peak_mb"] = peak_memory_mb(pids)
            finally:
                server.terminate()
                server.wait(60)
    print("measuring bf16 against fp32 ...", flush=True)
    fast = fast_mode(paths, pictures)
    report(results, fast, weights, {**machine(), "choices": choices_made(os.path.join(logs, "app.log"))})


def choices_made(log_path: str) -> list[str]:
    """The app's choices of product for the decoders' few-row steps, as its log gave them at load."""
    with open(log_path, encoding="utf-8", errors="replace") as file:
        return [line.split("models: ", 1)[1].strip() for line in file if "decoder, FEW_ROW_LINEAR" in line]


def report(results: dict, fast: dict, weights: str, host: dict) -> None:
    base, ours = results["baseline"], results["app"]
    rows = []

    def latency(label, key, target):
        for name, share in (("p50", 0.5), ("p95", 0.95)):
            b, o = percentile(base[key], share), percentile(ours[key], share)
            goal = target if name == "p50" else ""
            rows.append((f"{label} {name} (s)", f"{b:.3f}", f"{o:.3f}", f"{o / b:.2f}", goal))

    latency("upload -> caption, one client", "upload", "<= 0.80")
    latency("first question, 2 s after the upload", "first_question", "<= 0.40")
    latency("follow-up question", "follow_up", "<= 0.30")
    for count in CLIENTS:
        b, o = base[f"questions_per_second_{count}"], ours[f"questions_per_second_{count}"]
        rows.append((f"questions/s, {count} clients on 4 images", f"{b:.2f}", f"{o:.2f}", f"{o / b:.2f}",
                     ">= 6" if count == 8 else ""))
    for count in CLIENTS:
        b, o = base[f"captions_per_second_{count}"], ours[f"captions_per_second_{count}"]
        rows.append((f"captions/s, {count} uploaders", f"{b:.3f}", f"{o:.3f}", f"{o / b:.2f}",
                     ">= 1.3" if count == 4 else ""))
    rows.append(("peak memory of the server (MB)", f"{base['peak_mb']:.0f}", f"{ours['peak_mb']:.0f}",
                 f"{ours['peak_mb'] / base['peak_mb']:.2f}", "<= 1.3"))
    same_captions = sum(a == b for a, b in zip(base["texts"]["captions"], ours["texts"]["captions"]))
    same_answers = sum(a == b for a, b in zip(base["texts"]["answers"], ours["texts"]["answers"]))

    table = ["| measure | baseline | this app | ours/baseline | target |", "| --- | ---: | ---: | ---: | --- |"]
    table += [f"| {' | '.join(row)} |" for row in rows]
    lines = [
        f"## Speed on {host['cpu']}: `make bench-speed`",
        "",
        f"Written by `make bench-speed` on {time.strftime('%Y-%m-%d')}. Both servers ran one after the other on this "
        "machine,",
        "each as gunicorn (gthread, 16 threads) on 127.0.0.1, driven over HTTP by the same client code.",
        "",
        f"- Machine: {host['cpu']}, {host['cores']} cores, {host['memory_gb']} GiB; CPU flags of note: {host['flags']}",
        f"- torch {host['torch']} ({host['torch_threads']} threads), BLAS {host['blas']}, transformers "
        f"{host['transformers']}, Python {host['python']}",
        *[f"- The app's choice at load: {choice}" for choice in host["choices"]],
        f"- Models: {weights}; fp32 on the CPU; captions {GENERATION['CAPTION_NUM_BEAMS']} beams and exactly "
        f"{GENERATION['CAPTION_MAX_LENGTH']} tokens, answers {GENERATION['VQA_NUM_BEAMS']} beams and exactly "
        f"{GENERATION['VQA_MAX_LENGTH']} tokens, the start token included (min = max length, so both do the same work)",
        "- Baseline (`bench/baseline.py`): `processor(images=..., text=...)` then `model.generate(**inputs)` for "
        "every request, one at a time under a lock",
        f"- Samples: {UPLOADS} uploads, {FIRST_QUESTIONS} first questions, {FOLLOW_UPS} follow-ups; throughput with "
        f"{QUESTIONS_PER_CLIENT} questions or {UPLOADS_PER_CLIENT} uploads per client; p95 is the nearest rank",
        "",
        *table,
        "",
        f"Same tokens as the baseline: captions {same_captions}/{len(base['texts']['captions'])}, "
        f"answers {same_answers}/{len(base['texts']['answers'])}.",
        "",
        f"Fast mode (bf16 against fp32, in-process, 12 questions): speed-up {fast['speedup']:.2f}x, tokens equal "
        f"{fast['equal']}/{fast['total']}. This CPU {'has' if fast['native_bf16'] else 'has no'} native bf16 "
        f"(avx512_bf16 or AMX), so FAST_MODE=1 {'uses bf16' if fast['native_bf16'] else 'keeps fp32'} here.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    write_section(f"speed {host['cpu']}", text)  # one section for each CPU model it was run on
    os.makedirs(os.path.join(ROOT, "bench-models"), exist_ok=True)
    with open(os.path.join(ROOT, "bench-models", "last-run.json"), "w") as file:
        json.dump({"results": results, "fast": fast}, file, indent=1)


if __name__ == "__main__":
    main()
