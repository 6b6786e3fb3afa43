"""A real HTTP server on 127.0.0.1 that speaks the Hugging Face text-to-image protocol.

Each key is told how to answer with a list of behaviours, used in turn (the last one repeats).
"""

import base64
import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import image_bytes


def png(color="purple", size=(16, 16)) -> bytes:
    return image_bytes("PNG", size=size, color=color)


def jpeg(color="orange") -> bytes:
    return image_bytes("JPEG", size=(16, 16), color=color)


def echo_pieces(authorization: str) -> bytes:
    """A plain-text error quoting pieces of the key: its middle, its last 9 characters, reversed 8-grams."""
    key = authorization.removeprefix("Bearer ")
    return f"token {key[3:15]} ends in {key[-9:]}; checked {key[:8][::-1]}".encode()


class FakeInferenceAPI:
    """Records every request (path, key, JSON body, headers) and answers as scripted per key."""

    def __init__(self):
        self.requests = []
        self.script = {}
        self.release = threading.Event()  # a held ('hang') answer waits for this, never for a clock
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"null")
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                fake.requests.append({"path": self.path, "key": key, "body": body, "headers": dict(self.headers)})
                behaviours = fake.script.get(key, ["ok"])
                behaviour = behaviours.pop(0) if len(behaviours) > 1 else behaviours[0]
                fake.answer(self, behaviour)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/models"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def keys_used(self) -> list[str]:
        return [request["key"] for request in self.requests]

    def answer(self, handler, behaviour):
        if isinstance(behaviour, tuple):
            behaviour, extra = behaviour
        else:
            extra = {}
        if behaviour == "hang":
            self.release.wait(10)
            return
        if behaviour == "reset":
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.connection.close()
            return
        status, content_type, body = {
            "ok": (200, "image/png", png()),
            "jpeg": (200, "image/jpeg", jpeg()),
            "b64": (200, "application/json",
                    json.dumps({"data": [{"b64_json": base64.b64encode(png("teal")).decode()}]}).encode()),
            "html": (200, "text/html", b"<html><body>Service page</body></html>"),
            "truncated": (200, "image/png", png(size=(64, 64))[:60]),
            "401": (401, "application/json", b'{"error": "Invalid credentials in Authorization header"}'),
            "402": (402, "application/json", b'{"error": "You have exceeded your monthly included credits"}'),
            "credits": (400, "application/json", b'{"error": "Insufficient balance: buy credits to go on"}'),
            "403": (403, "application/json", b'{"error": "This token does not have permission for inference"}'),
            "429": (429, "application/json", b'{"error": "Rate limit reached"}'),
            "loading": (503, "application/json", b'{"error": "Model is loading", "estimated_time": 20.5}'),
            "500": (500, "application/json", b'{"error": "Internal Server Error"}'),
            "400": (400, "application/json", b'{"error": "height must be a multiple of 8"}'),
            "404": (404, "application/json", b'{"error": "Model not found"}'),
            "410": (410, "application/json", b'{"error": "The requested API is no longer supported"}'),
            "422": (422, "application/json", b'{"error": ["Input validation error: inputs must be text"]}'),
            "echo-key": (400, "application/json",
                         json.dumps({"error": "bad token " + handler.headers["Authorization"]}).encode()),
            # The key past the 300 characters an error message is cut to, and pieces of it.
            "echo-key-late": (400, "application/json",
                              json.dumps({"error": "x" * 280 + " " + handler.headers["Authorization"]}).encode()),
            "echo-key-pieces": (400, "text/plain", echo_pieces(handler.headers["Authorization"])),
        }[behaviour]
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
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
