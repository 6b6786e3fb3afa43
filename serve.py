"""`make run`: gunicorn behind nginx, so that slow clients cannot take gunicorn's threads.

nginx reads each request whole (body included) before handing it to gunicorn, and takes each
answer whole before trickling it out, so a client sending or reading at 10 bytes/s holds only a
connection in nginx, never one of gunicorn's threads. nginx listens on HOST:PORT; gunicorn on a
loopback port of its own. Without nginx installed, gunicorn serves HOST:PORT alone, with a warning.
Ctrl-C (or SIGTERM) stops both; if either stops, the other is stopped too.
"""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import settings

log = logging.getLogger("serve")

ROOT = os.path.dirname(os.path.abspath(__file__))
GUNICORN_OPTIONS = ["--worker-class", "gthread", "--threads", "16", "--timeout", "300", "--keep-alive", "75"]


def nginx_config(run_folder: str, listen: str, upstream: str, max_body: int) -> str:
    """The nginx configuration: buffer whole requests and answers; nginx's own errors in the app's JSON shape."""
    errors = {  # nginx's status: the status answered, the code and the message
        413: (413, "file_too_large", f"the request is larger than {max_body // 2**20} MB: upload a smaller image"),
        502: (503, "server_starting", "the app server is not answering yet (starting or restarting): try again "
                                      "in a few seconds"),
        504: (504, "server_timeout", "the app server took too long to answer: try again later"),
        400: (400, "bad_request", "the request could not be read: check its headers and body"),
    }
    error_pages = "\n".join(
        f"        error_page {status} = @error_{status};\n"
        f"        location @error_{status} {{ default_type application/json; add_header Retry-After 5 always; "
        f"return {answered} '{json.dumps({'error': message, 'code': code})}'; }}"
        for status, (answered, code, message) in errors.items())
    temporary = "\n".join(f"    {kind}_temp_path {run_folder}/{kind};" for kind in
                          ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
daemon off;
worker_processes 1;
pid {run_folder}/nginx.pid;
error_log stderr crit;  # not a line for each request that finds gunicorn still starting
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temporary}
    client_max_body_size {max_body};
    client_body_buffer_size 1m;
    client_header_timeout 60s;
    client_body_timeout 60s;
    send_timeout 60s;
    keepalive_timeout 75s;
    server_tokens off;
    upstream app {{ server {upstream}; keepalive 16; }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_request_buffering on;
            proxy_buffering on;
            proxy_read_timeout 310s;
        }}
{error_pages}
    }}
}}
"""


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = {**settings.DEFAULTS, **settings.from_environment(os.environ)}
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    nginx = shutil.which("nginx") or next((path for path in ("/usr/sbin/nginx",) if os.path.exists(path)), None)
    public = listen_address(config["HOST"], config["PORT"])
    if nginx is None:
        log.warning("nginx is not installed: gunicorn serves %s alone, and slow clients can take all its threads "
                    "(install nginx, e.g. apt-get install nginx)", public)
        return run([[gunicorn, "--bind", public, *GUNICORN_OPTIONS, "app:app"]])
    run_folder = tempfile.mkdtemp(prefix="image-assistant-nginx-")
    os.chmod(run_folder, 0o755)  # nginx's workers may run as another user, and write request bodies here
    try:
        inner = f"127.0.0.1:{free_loopback_port()}"
        # Twice the upload limit: nginx refuses only what is far too large; the app answers the rest itself.
        max_body = 2 * (config["MAX_IMAGE_BYTES"] + 64 * 1024)
        with open(os.path.join(run_folder, "nginx.conf"), "w", encoding="utf-8") as file:
            file.write(nginx_config(run_folder, public, inner, max_body))
        log.info("nginx listens on %s and buffers requests for gunicorn on %s", public, inner)
        return run([[gunicorn, "--bind", inner, *GUNICORN_OPTIONS, "app:app"],
                    [nginx, "-e", "stderr", "-p", run_folder, "-c", os.path.join(run_folder, "nginx.conf")]])
    finally:
        shutil.rmtree(run_folder, ignore_errors=True)


def run(commands: list[list[str]]) -> int:
    """Run the processes until a signal or until one of them stops; then stop the others; its exit code."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    processes = [subprocess.Popen(command, cwd=ROOT) for command in commands]
    code = 0
    try:
        while not stopping:
            ended = [process for process in processes if process.poll() is not None]
            if ended:
                code = ended[0].returncode
                break
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # a fast stop for nginx, a graceful one for gunicorn
        deadline = time.monotonic() + 10
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return code


if __name__ == "__main__":
    sys.exit(main())
