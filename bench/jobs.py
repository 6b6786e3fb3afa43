"""`make bench-jobs`: a batch job against single uploads, and a person's questions while a job runs; one run.

One server, as a user runs it: gunicorn (gthread, 16 threads) on 127.0.0.1 with the app's defaults (MAX_BATCH,
the 0.3 s idle gate before bulk work ...; any setting in the environment passes through), on the full-size
BLIP-base architecture with random weights (bench-models/, as bench/speed.py builds it) and the generation
lengths fixed as bench/speed.py fixes them, so that every caption costs the same.

Part 1, captions per second: 64 distinct photo-like images (JPEG and PNG, about 640x480), sent as 64 single
POST /upload from 4 clients (16 each), against the same 64 as one POST /jobs, timed from the POST until GET
/jobs/<id> (every 0.2 s) says done. The two alternate (single, job, job, single, single, job), each starting on
an idle server; medians, and the ratio job/single (target >= 1).
Part 2, a person's questions: 15 questions about one image, one after another, on the idle server and while a
job runs; p50 and the ratio (target <= 1.5). Then the same with 1 s of think time before each question, when a
question usually finds a bulk batch running (reported as information).
Then, the server stopped, the captioner alone in this process: seconds a caption at batch sizes 1, 4 and 8, and
what decoding one image as the job runner does costs. Where CUDA is at hand, captions per second in fp16.
Prints the figures and writes the "jobs" section of BENCHMARKS.md.
"""

import hashlib
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime

import requests
from PIL import Image

from processes import free_port, stop
from report import write_section
from speed import GENERATION, QUESTIONS, machine, model_paths, percentile, photo, serve, workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB_IMAGES = 64
CLIENTS = 4
ORDER = ("single", "job", "job", "single", "single", "job")  # alternating, balanced against drift
QUESTION_COUNT = 15
THINK_SECONDS = 1.0
QUESTION_JOB_IMAGES = 192  # enough to outlast the questions with think time; cancelled once they are asked
POLL_SECONDS = 0.2
GPU_JOB_IMAGES = 1024
BATCH_SIZES = (1, 2, 4, 8)
ALONE_ROUNDS = 3
SIZES = [(640, 480), (480, 640), (640, 427), (600, 450), (720, 540), (512, 512)]
SETTINGS_SHOWN = {"MAX_BATCH": 8, "BATCH_WAIT_MS": 5, "MAX_DECODES": 2, "MAX_QUEUE": 32, "MAX_BACKGROUND": 16}


def picture(seed: int) -> tuple[str, bytes, str]:
    """A distinct photo-like image: bench/speed.py's scene at one of a few camera sizes with sensor grain, as a
    JPEG (even seeds) or a PNG; (file name, bytes, content type)."""
    rng = random.Random(seed)
    size = rng.choice(SIZES)
    scene = Image.open(io.BytesIO(photo(seed))).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    grain = Image.effect_noise(size, rng.uniform(10, 30)).convert("RGB")
    image = Image.blend(scene, grain, 0.1)
    buffer = io.BytesIO()
    if seed % 2 == 0:
        image.save(buffer, "JPEG", quality=rng.randrange(80, 95))
        return f"photo-{seed}.jpg", buffer.getvalue(), "image/jpeg"
    image.save(buffer, "PNG")
    return f"photo-{seed}.png", buffer.getvalue(), "image/png"


class Server:
    """The server under test over HTTP, and its worker process (for telling when it is idle)."""

    def __init__(self, base: str, pids: list[str]):
        self.base, self.pids = base, pids

    def session(self) -> requests.Session:
        """A new client: its own cookie session, so its own owner (AUTH is off on 127.0.0.1)."""
        return requests.Session()

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, client: requests.Session) -> None:
        """Until nothing is queued (background and bulk work included) and the worker has stopped computing (a
        batch may still run with its queue empty)."""
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            queue = client.get(self.base + "/healthz", timeout=30).json()["queue"]
            if queue["queued"] or queue["background"] or queue["bulk"]:
                time.sleep(0.2)
                continue
            before = self.cpu_seconds()
            time.sleep(0.5)
            if self.cpu_seconds() - before < 0.05:  # under 10% of a core: no batch is running
                return
        raise SystemExit("the server did not become idle within 900 s")

    def upload(self, client: requests.Session, item: tuple[str, bytes, str]) -> dict:
        response = client.post(self.base + "/upload", files={"image": item}, timeout=600)
        if response.status_code != 201:
            raise SystemExit(f"POST /upload answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def ask(self, client: requests.Session, image_id: str, question: str) -> float:
        started = time.perf_counter()
        response = client.post(self.base + "/question", json={"image_id": image_id, "question": question},
                               timeout=600)
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            raise SystemExit(f"POST /question answered {response.status_code}: {response.text[:300]}")
        return seconds

    def start_job(self, client: requests.Session, items: list) -> dict:
        response = client.post(self.base + "/jobs", files=[("images", item) for item in items], timeout=600)
        if response.status_code != 202:
            raise SystemExit(f"POST /jobs answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def job(self, client: requests.Session, job_id: str) -> dict:
        response = client.get(f"{self.base}/jobs/{job_id}", timeout=60)
        response.raise_for_status()
        return response.json()

    def cancel(self, client: requests.Session, job_id: str) -> None:
        client.delete(f"{self.base}/jobs/{job_id}", timeout=60).raise_for_status()


def singles(server: Server, items: list) -> dict:
    """items as single uploads from CLIENTS clients at once, each sending its share one after another."""
    clients = [server.session() for _ in range(CLIENTS)]
    start = threading.Barrier(CLIENTS + 1)
    errors = []

    def send(index: int) -> None:
        start.wait()
        try:
            for item in items[index::CLIENTS]:
                server.upload(clients[index], item)
        except BaseException as error:  # reported after the others finish
            errors.append(error)

    threads = [threading.Thread(target=send, args=(index,)) for index in range(CLIENTS)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    left = clients[0].get(server.base + "/healthz", timeout=30).json()["queue"]["background"]
    return {"seconds": seconds, "per_second": len(items) / seconds, "contexts_left": left}


def one_job(server: Server, items: list, poll: float = POLL_SECONDS) -> dict:
    """items as one job, from the POST until its status says done."""
    client = server.session()
    started = time.perf_counter()
    job = server.start_job(client, items)
    posted = time.perf_counter() - started
    while job["status"] in ("queued", "running"):
        time.sleep(poll)
        job = server.job(client, job["job_id"])
    seconds = time.perf_counter() - started
    if job["status"] != "done" or job["done"] != len(items):
        raise SystemExit(f"the job ended {job['status']} with {job['done']} of {len(items)} done: {job}")
    inside = moment(job["finished_at"]) - moment(job["started_at"])
    return {"seconds": seconds, "per_second": len(items) / seconds, "post_seconds": posted, "runner_seconds": inside}


def moment(text: str) -> float:
    """A time as the API gives it (ISO 8601, UTC, milliseconds), in seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def question_series(server: Server, client: requests.Session, image_id: str, think: float,
                    job_id: str | None = None) -> dict:
    """QUESTION_COUNT questions one after another (think seconds before each); with a job, whether it still ran."""
    seconds, during, done = [], 0, []
    for index in range(QUESTION_COUNT):
        time.sleep(think)
        seconds.append(server.ask(client, image_id, QUESTIONS[index % len(QUESTIONS)]))
        if job_id:  # untimed: did the job run all along?
            job = server.job(client, job_id)
            during += job["status"] == "running"
            done.append(job["done"])
    return {"seconds": seconds, "during": during, "done": done}


def questions(server: Server, client: requests.Session, image_id: str, think: float, job_items: list) -> dict:
    """The series on the idle server, then during a job (started, 2 s into its first batch, then cancelled)."""
    server.wait_idle(client)
    idle = question_series(server, client, image_id, think)
    jobber = server.session()
    job = server.start_job(jobber, job_items)
    while server.job(jobber, job["job_id"])["status"] == "queued":
        time.sleep(0.1)
    time.sleep(2.0)  # its first items are decoded, and their bulk batch is running
    before = server.job(jobber, job["job_id"])["done"]
    busy = question_series(server, client, image_id, think, job["job_id"])
    server.cancel(jobber, job["job_id"])
    server.wait_idle(client)
    return {"idle": idle["seconds"], "busy": busy["seconds"], "during": busy["during"],
            "job_done": busy["done"][-1] - before}


def measure(server: Server, items: list, question_items: list, order=ORDER) -> dict:
    """Part 1 and Part 2 on one server."""
    client = server.session()
    print("warming up ...", flush=True)
    warm = server.upload(client, question_items[-1])
    server.ask(client, warm["image_id"], QUESTIONS[0])
    one_job(server, question_items[-9:-1])
    server.wait_idle(client)
    rounds = []
    for number, kind in enumerate(order, 1):
        server.wait_idle(client)
        figures = singles(server, items) if kind == "single" else one_job(server, items)
        rounds.append({"kind": kind, **figures})
        print(f"  round {number}: {kind:6} {figures['seconds']:7.1f} s  {figures['per_second']:.3f} captions/s",
              flush=True)
    results = {"rounds": rounds}
    if question_items:
        asker = server.session()
        image_id = server.upload(asker, picture(10_000))["image_id"]
        server.wait_idle(asker)
        server.ask(asker, image_id, "what is this?")  # its context is cached now, as in both series
        for name, think in (("back_to_back", 0.0), ("think", THINK_SECONDS)):
            print(f"questions, {name} ...", flush=True)
            results[name] = questions(server, asker, image_id, think, question_items)
    return results


def start_server(env: dict, log_path: str) -> tuple[subprocess.Popen, Server]:
    port = free_port()
    process = serve("app:app", env, log_path, port)
    while not workers(process):
        time.sleep(0.1)
    return process, Server(f"http://127.0.0.1:{port}", workers(process))


def alone(paths: dict, items: list) -> dict:
    """The captioner alone in this process: seconds a caption by batch size, and the runner's decoding of an image."""
    import images
    import models

    generation = {"num_beams": int(GENERATION["CAPTION_NUM_BEAMS"]),
                  "min_length": int(GENERATION["CAPTION_MIN_LENGTH"]),
                  "max_length": int(GENERATION["CAPTION_MAX_LENGTH"])}
    captioner = models.Captioner.from_pretrained(paths["caption"], "cpu", generation, local_files_only=True,
                                                 max_batch=int(os.environ.get("MAX_BATCH", 8)))
    read, prepared, inputs = [], [], []
    for _, data, _ in items:
        started = time.perf_counter()
        stream = io.BytesIO(data)
        hashlib.file_digest(stream, "sha256")
        stream.seek(0)
        loaded = images.read_image(stream, max_pixels=40_000_000, max_bytes=16 << 20)
        middle = time.perf_counter()
        inputs.append(captioner.model_input(loaded.pixels))
        read.append(middle - started)
        prepared.append(time.perf_counter() - middle)
    per_caption = {size: [] for size in BATCH_SIZES}
    captioner.caption_batch(inputs[:8])  # warm-up
    for turn in range(ALONE_ROUNDS):  # interleaved, each round in another order, against drift
        for size in BATCH_SIZES[turn % len(BATCH_SIZES):] + BATCH_SIZES[:turn % len(BATCH_SIZES)]:
            started = time.perf_counter()
            captioner.caption_batch(inputs[:size])
            per_caption[size].append((time.perf_counter() - started) / size)
    return {"per_caption": {size: statistics.median(values) for size, values in per_caption.items()},
            "read_ms": statistics.median(read) * 1000, "input_ms": statistics.median(prepared) * 1000}


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu(env: dict, items: list, log_path: str) -> dict:
    """Captions per second on the GPU in fp16 (the app's choice there): GPU_JOB_IMAGES as one job, medians of 3,
    and the 64 single uploads from 4 clients once for comparison."""
    import torch

    process, server = start_server({**env, "DEVICE": "cuda"}, log_path)
    try:
        many = [(f"{index}-{items[index % len(items)][0]}", *items[index % len(items)][1:])
                for index in range(GPU_JOB_IMAGES)]
        client = server.session()
        one_job(server, many[:64], poll=0.05)  # warm-up
        server.wait_idle(client)
        jobs = []
        for _ in range(3):
            jobs.append(one_job(server, many, poll=0.05))
            server.wait_idle(client)
        single = singles(server, items[:JOB_IMAGES])
    finally:
        stop(process)
    return {"name": torch.cuda.get_device_name(0), "job": statistics.median(job["per_second"] for job in jobs),
            "runner": statistics.median(GPU_JOB_IMAGES / job["runner_seconds"] for job in jobs),
            "single": single["per_second"]}


def main() -> None:
    paths, weights = model_paths()
    load = [os.getloadavg()[0]]
    print("making the images ...", flush=True)
    everything = [picture(seed) for seed in range(QUESTION_JOB_IMAGES)]
    items = everything[:JOB_IMAGES]
    env = {**GENERATION, "CAPTION_MODEL": paths["caption"], "VQA_MODEL": paths["vqa"], "HF_HUB_OFFLINE": "1",
           "DEVICE": "cpu", "FAST_MODE": "0", "SECRET_KEY": "bench"}
    logs = os.path.join(ROOT, "bench-models")
    with tempfile.TemporaryDirectory() as data:
        env.update(UPLOAD_FOLDER=os.path.join(data, "uploads"), GENERATED_FOLDER=os.path.join(data, "generated"),
                   HISTORY_FILE=os.path.join(data, "history.json"))
        print("starting the server ...", flush=True)
        process, server = start_server(env, os.path.join(logs, "jobs.log"))
        try:
            results = measure(server, items, everything)
            if workers(process) != server.pids:
                raise SystemExit(f"the server's worker was replaced during the run: see {logs}/jobs.log")
        finally:
            stop(process)
        print("the captioner alone ...", flush=True)
        results["alone"] = alone(paths, items)
    if has_cuda():
        print("on the GPU ...", flush=True)
        with tempfile.TemporaryDirectory() as data:  # a fresh history for the GPU's server
            env.update(UPLOAD_FOLDER=os.path.join(data, "uploads"), GENERATED_FOLDER=os.path.join(data, "generated"),
                       HISTORY_FILE=os.path.join(data, "history.json"))
            results["gpu"] = gpu(env, everything, os.path.join(logs, "jobs-gpu.log"))
    else:
        print("no GPU here: the fp16 captions/s figure is not measured", flush=True)
    load.append(os.getloadavg()[0])
    report(results, items, weights, {**machine(), "load": load})


def latency_row(label: str, idle: list[float], busy: list[float], during: int, done: int, target: str) -> str:
    ratio = statistics.median(busy) / statistics.median(idle)
    return (f"| {label} | {statistics.median(idle):.3f} | {statistics.median(busy):.3f} | **{ratio:.2f}** | {target} "
            f"| {percentile(idle, 0.95):.3f} / {percentile(busy, 0.95):.3f} | {max(busy):.3f} "
            f"| {during}/{QUESTION_COUNT}, {done} |")


def report(results: dict, items: list, weights: str, host: dict) -> None:
    rounds = results["rounds"]
    single = statistics.median(r["per_second"] for r in rounds if r["kind"] == "single")
    job = statistics.median(r["per_second"] for r in rounds if r["kind"] == "job")
    jobs = [r for r in rounds if r["kind"] == "job"]
    sizes = [len(data) for _, data, _ in items]
    settings = ", ".join(f"{name}={os.environ.get(name, default)}" for name, default in SETTINGS_SHOWN.items())
    alone_ = results["alone"]
    lines = [
        "## Batch jobs against single uploads: `make bench-jobs`",
        "",
        f"Written by `make bench-jobs` on {time.strftime('%Y-%m-%d')}. One server for everything, as a user runs it: "
        f"gunicorn (gthread, 16 threads) on 127.0.0.1, the JSON history, the app's defaults ({settings}; bulk work "
        "waits until no person's request has run for 0.3 s, and a question runs between a bulk batch's steps), "
        "driven over HTTP.",
        "",
        f"- Machine: {host['cpu']}, {host['cores']} cores, {host['memory_gb']} GiB; torch {host['torch']} "
        f"({host['torch_threads']} threads), transformers {host['transformers']}, Python {host['python']}; "
        "load average "
        f"(1 min) at the start and the end: {host['load'][0]:.1f}, {host['load'][1]:.1f} (other work shares the cores)",
        f"- Models: {weights}; fp32 on the CPU; captions {GENERATION['CAPTION_NUM_BEAMS']} beams and exactly "
        f"{GENERATION['CAPTION_MAX_LENGTH']} tokens, answers {GENERATION['VQA_NUM_BEAMS']} beams and exactly "
        f"{GENERATION['VQA_MAX_LENGTH']} tokens (min = max length, so every caption costs the same)",
        f"- Images: {JOB_IMAGES} distinct photo-like images, half JPEG and half PNG, 480 to 720 pixels wide, with "
        f"grain; {statistics.median(sizes) / 1024:.0f} KB median, {sum(sizes) / 2**20:.1f} MB in all",
        f"- Captions/s: the {JOB_IMAGES} images as single POST /upload from {CLIENTS} clients at once "
        f"({JOB_IMAGES // CLIENTS} each, one after another), against one POST /jobs of the same images, timed from "
        f"the POST until GET /jobs/<id> (every {POLL_SECONDS} s) says done; in the order "
        f"{', '.join(ORDER)}, each on an idle server; medians",
        f"- Questions: {QUESTION_COUNT} about one uploaded image (its context cached), one after another, on the "
        f"idle server, then while a job of {QUESTION_JOB_IMAGES} distinct images runs (from 2 s after its first "
        "claim; the job cancelled afterwards); p95 is the nearest rank",
        "",
        "| measure | single uploads, 4 clients | one job | job/single | target |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| captions/s, median of {len(jobs)} | {single:.3f} | {job:.3f} | **{job / single:.2f}** | >= 1 |",
        "| captions/s, each round in order | "
        + ", ".join(f"{r['per_second']:.3f}" for r in rounds if r["kind"] == "single") + " | "
        + ", ".join(f"{r['per_second']:.3f}" for r in rounds if r["kind"] == "job") + " | | |",
        f"| the job's POST (sending and staging {JOB_IMAGES} files), median | | "
        f"{statistics.median(r['post_seconds'] for r in jobs):.2f} s | | |",
        f"| the job from its first claim to its last item (the server's times), median | | "
        f"{statistics.median(r['runner_seconds'] for r in jobs):.1f} s "
        f"({statistics.median(JOB_IMAGES / r['runner_seconds'] for r in jobs):.3f}/s) | | |",
        "| question contexts still queued when the last single upload was answered (computed afterwards, "
        "untimed) | " + ", ".join(str(r["contexts_left"]) for r in rounds if r["kind"] == "single") + " | | | |",
        "",
        "| questions, one after another | idle p50 (s) | during a job p50 (s) | ratio | target | p95 idle / job (s) "
        "| max during a job (s) | asked while the job ran, its captions meanwhile |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |",
        latency_row("back to back", results["back_to_back"]["idle"], results["back_to_back"]["busy"],
                    results["back_to_back"]["during"], results["back_to_back"]["job_done"], "<= 1.5"),
        latency_row(f"{THINK_SECONDS:.0f} s of think time before each", results["think"]["idle"],
                    results["think"]["busy"], results["think"]["during"], results["think"]["job_done"],
                    "(information)"),
        "",
        f"The captioner alone, in one process after the server stopped (what the figures above are made of; medians of "
        f"{ALONE_ROUNDS}): "
        + ", ".join(f"{seconds:.3f} s a caption at batch {size}" for size, seconds in alone_["per_caption"].items())
        + f"; decoding one image as an upload and the job runner do (SHA-256, read and re-encode, the model's input): "
          f"{alone_['read_ms'] + alone_['input_ms']:.0f} ms median ({alone_['read_ms']:.0f} ms reading and "
          f"re-encoding, {alone_['input_ms']:.0f} ms the model's input).",
        "",
    ]
    if "gpu" in results:
        found = results["gpu"]
        lines.append(f"On the GPU ({found['name']}, fp16, the same settings): one job of {GPU_JOB_IMAGES} images "
                     f"**{found['job']:.1f} captions/s** (median of 3; {found['runner']:.1f}/s from its first claim to "
                     f"its last item), {JOB_IMAGES} single uploads from {CLIENTS} clients {found['single']:.1f}/s. "
                     "Target: 300 or more on a data-centre GPU.")
    else:
        lines.append("GPU: no GPU here (torch.cuda.is_available() is false), so the fp16 captions/s figure "
                     "(target: 300 or more on a data-centre GPU) was not measured in this run.")
    text = "\n".join(lines) + "\n"
    print(text)
    write_section("jobs", text)


if __name__ == "__main__":
    main()
