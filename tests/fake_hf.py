"""A real HTTP server on 127.0.0.1 that answers as the Hugging Face hub and its inference router do.

The answers replay the shapes huggingface_hub's own recorded cassettes hold
(tests/cassettes/TestInferenceClient.test_text_to_image_default[<provider>,text-to-image].yaml):
- the hub: GET /api/models/<id>[?expand=inferenceProviderMapping] -> the model, its pipeline tag and
  {"<provider>": {"status", "providerId", "task"}};
- hf-inference: POST /hf-inference/models/<id> {"inputs", "parameters"} -> the image bytes;
- fal-ai: POST /fal-ai/<providerId> {"prompt", "image_size", ...} -> {"images": [{"url", ...}]}, then GET url;
- replicate: POST /replicate/v1/predictions {"input", "version"} -> 201 {"output": [url], ...}, then GET url;
- together: POST /together/v1/images/generations {"prompt", "response_format": "base64", "model"}
  -> {"data": [{"b64_json"}]}.
Each key is told how to answer with a list of behaviours, used in turn (the last one repeats).
"""

import base64
import json
import re
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from keys import FRAGMENT

# A run of FRAGMENT characters that a port, a date or time, a hex digest or a UUID could be made of.
BY_CHANCE = re.compile(f"[0-9a-fA-F:.+\\- TZ]{{{FRAGMENT}}}")


def chance_proof(*keys: str) -> list[str]:
    """The tests' keys, each checked to hold no run of FRAGMENT characters that a log line could show by chance."""
    for key in keys:
        assert not BY_CHANCE.search(key), f"{key}: use letters outside a-f, and no digits"
    return list(keys)


def fragments_in(text: str, keys: list[str]) -> list[str]:
    """Every run of FRAGMENT characters of a key that text holds: the Redactor hides each one, so none may show."""
    return [key[start : start + FRAGMENT] for key in keys for start in range(len(key) - FRAGMENT + 1)
            if key[start : start + FRAGMENT] in text]


def image_bytes(*args, **kwargs) -> bytes:
    from conftest import image_bytes  # here, not above: conftest starts this server while it is imported

    return image_bytes(*args, **kwargs)


def png(color="purple", size=(16, 16)) -> bytes:
    return image_bytes("PNG", size=size, color=color)


def jpeg(color="orange") -> bytes:
    return image_bytes("JPEG", size=(16, 16), color=color)


def echo_pieces(authorization: str) -> bytes:
    """A plain-text error quoting pieces of the key: its middle, its last 9 characters, reversed 8-grams."""
    key = authorization.removeprefix("Bearer ")
    return f"token {key[3:15]} ends in {key[-9:]}; checked {key[:8][::-1]}".encode()


def mapping(*providers, status="live", task="text-to-image") -> dict:
    """A model's inferenceProviderMapping as the hub answers it, with the provider ids of the cassettes."""
    ids = {"hf-inference": None, "fal-ai": "fal-ai/flux/dev", "together": "black-forest-labs/FLUX.1-schnell",
           "replicate": "bytedance/sdxl-lightning-4step:"
                        "5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637",
           "nscale": "stabilityai/stable-diffusion-xl-base-1.0"}
    return {provider: {"status": status, "providerId": ids.get(provider) or "", "task": task} for provider in providers}


class FakeHuggingFace:
    """Records every inference request (path, key, JSON body, headers) and answers as scripted per key."""

    def __init__(self):
        self.reset()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = urlsplit(self.path).path
                if path.startswith("/api/models/"):
                    fake.hub_answer(self, path.removeprefix("/api/models/"))
                elif path.startswith("/files/"):
                    fake.send(self, 200, "image/png" if path.endswith(".png") else "image/jpeg",
                              fake.files.get(path.removeprefix("/files/"), b"not found"))
                else:
                    fake.send(self, 404, "application/json", b'{"error": "no such page"}')

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"null")
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                fake.requests.append({"path": self.path, "key": key, "body": body,
                                      "headers": {name.lower(): value for name, value in self.headers.items()}})
                behaviours = fake.script.get(key, ["ok"])
                behaviour = behaviours.pop(0) if len(behaviours) > 1 else behaviours[0]
                fake.answer(self, behaviour)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def reset(self):
        """Forget what the last test asked and told."""
        self.requests = []
        self.script = {}
        self.models = {}  # model id -> {"pipeline_tag", "mapping"}, or None for a model the hub does not know
        self.hub_requests = []
        self.hub_down = False  # True: the hub drops every connection unanswered, as one that cannot be reached
        self.release = threading.Event()  # a held ('hang') answer waits for this, never for a clock
        self.files = {"out.png": png("teal"), "out.jpg": jpeg("navy")}

    def keys_used(self) -> list[str]:
        return [request["key"] for request in self.requests]

    def hub_answer(self, handler, model):
        self.hub_requests.append(handler.path)
        if self.hub_down:
            self.drop(handler)
            return
        known = self.models.get(model, {"pipeline_tag": "text-to-image", "mapping": mapping("hf-inference")})
        if known is None:
            self.send(handler, 404, "application/json", b'{"error": "Repository not found"}',
                      {"X-Error-Code": "RepoNotFound"})
            return
        providers = {name: {**entry, "providerId": entry["providerId"] or model}
                     for name, entry in known["mapping"].items()}
        answer = {"_id": "65d505951e2597ff935d1be2", "id": model, "pipeline_tag": known["pipeline_tag"],
                  "inferenceProviderMapping": providers}
        self.send(handler, 200, "application/json", json.dumps(answer).encode())

    def ok(self, handler) -> tuple[int, str, bytes]:
        """A successful answer in the protocol of the provider the path names."""
        provider = handler.path.split("/")[1]
        if provider == "fal-ai":
            return 200, "application/json", json.dumps({
                "images": [{"url": f"{self.url}/files/out.png", "width": 16, "height": 16,
                            "content_type": "image/png"}],
                "timings": {"inference": 2.1455326322466135}, "seed": 1421022990, "has_nsfw_concepts": [False],
                "prompt": "An astronaut riding a horse on the moon."}).encode()
        if provider == "replicate":
            return 201, "application/json", json.dumps({
                "id": "jf23sy140hrj00cn0008841srg", "model": "bytedance/sdxl-lightning-4step",
                "input": {"prompt": "An astronaut riding a horse on the moon."}, "logs": "",
                "output": [f"{self.url}/files/out.jpg"], "data_removed": False, "error": None,
                "status": "processing", "created_at": "2025-02-13T15:49:24.1Z"}).encode()
        if provider == "together":
            return 200, "application/json", json.dumps({
                "id": "91172fe4be4b9f3b-CDG", "model": "black-forest-labs/FLUX.1-schnell", "object": "list",
                "data": [{"index": 0, "b64_json": base64.b64encode(png("olive")).decode(), "timings": {}}]}).encode()
        return 200, "image/png", png()

    def answer(self, handler, behaviour):
        if isinstance(behaviour, tuple):
            behaviour, extra = behaviour
        else:
            extra = {}
        if behaviour == "hang":
            self.release.wait(10)
            return
        if behaviour == "reset":
            self.drop(handler)
            return
        if behaviour == "ok":
            self.send(handler, *self.ok(handler), extra)
            return
        status, content_type, body = {
            "jpeg": (200, "image/jpeg", jpeg()),
            "webp": (200, "image/webp", image_bytes("WEBP", size=(16, 16))),
            "html": (200, "text/html", b"<html><body>Service page</body></html>"),
            "truncated": (200, "image/png", png(size=(64, 64))[:60]),
            "401": (401, "application/json", b'{"error": "Invalid credentials in Authorization header"}'),
            "invalid-token": (400, "application/json", b'{"error": "Invalid user token."}'),
            "402": (402, "application/json", b'{"error": "You have exceeded your monthly included credits"}'),
            "credits": (400, "application/json", b'{"error": "Insufficient balance: buy credits to go on"}'),
            "403": (403, "application/json",
                    b'{"error": "This authentication method does not have sufficient permissions to call '
                    b'Inference Providers"}'),
            "gated": (403, "application/json",
                      b'{"error": "Access to model test/sd is restricted. You must have access to it and be '
                      b'authenticated to access it."}'),
            "429": (429, "application/json", b'{"error": "Rate limit reached"}'),
            "loading": (503, "application/json", b'{"error": "Model is loading", "estimated_time": 20.5}'),
            "500": (500, "application/json", b'{"error": "Internal Server Error"}'),
            "400": (400, "application/json", b'{"error": "height must be a multiple of 8"}'),
            "404": (404, "application/json", b'{"error": "Model not found"}'),
            "410": (410, "application/json", b'{"error": "The requested API is no longer supported"}'),
            "422": (422, "application/json", b'{"error": ["Input validation error: inputs must be text"]}'),
            "echo-key": (400, "application/json",
                         json.dumps({"error": "bad request " + handler.headers["Authorization"]}).encode()),
            # The key past the 300 characters an error message is cut to, and pieces of it.
            "echo-key-late": (400, "application/json",
                              json.dumps({"error": "x" * 280 + " " + handler.headers["Authorization"]}).encode()),
            "echo-key-pieces": (400, "text/plain", echo_pieces(handler.headers["Authorization"])),
        }[behaviour]
        self.send(handler, status, content_type, body, extra)

    @staticmethod
    def drop(handler):
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.close_connection = True  # the handler returns, its socket closes, the client sees a reset

    @staticmethod
    def send(handler, status, content_type, body, extra=None):
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class FakeClock:
    """An injected clock: time moves only when the test or the client's sleep moves it."""

    def __init__(self, start=1_800_000_000.0):
        self.now = start
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
