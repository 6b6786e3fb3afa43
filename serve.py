"""`make run`: gunicorn behind nginx, so that slow clients cannot take gunicorn's threads.

nginx reads each request whole (body included) before handing it to gunicorn, and takes each
answer whole before trickling it out, so a client sending or reading at 10 bytes/s holds only a
connection in nginx, never one of gunicorn's threads. nginx listens on HOST:PORT; gunicorn on a
loopback port of its own. Request heads up to the app's limit (settings.MAX_HEADER_BYTES) pass
through both, and nginx's own refusals are JSON in the app's shape. Without nginx installed,
gunicorn serves HOST:PORT alone, with a warning.
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
from errors import SettingError

log = logging.getLogger("serve")

ROOT = os.path.dirname(os.path.abspath(__file__))
GUNICORN_OPTIONS = ["--worker-class", "gthread", "--threads", "16", "--timeout", "300", "--keep-alive", "75"]
# nginx's header buffer: a request line or one header field up to this, a little over the app's own limits, so that
# the app's check decides where the boundary lies and says what to do.
HEADER_BUFFER = settings.MAX_HEADER_BYTES + 1024
HEADER_BUFFERS = 3  # the request line and 32 KB of fields fit in 3 (a field that does not fit starts the next)
ERROR_PAGES = "/.nginx-errors/"  # where nginx's own errors are made JSON (see nginx_config)


def gunicorn_limits(behind_nginx: bool) -> list[str]:
    """gunicorn's limits on a request's head: behind nginx, above all it passes on; alone, room for the app's limit."""
    if behind_nginx:
        # nginx holds the head within HEADER_BUFFERS and refuses the rest as JSON; gunicorn must take all it passes
        # on, or it answers an HTML page of its own (414, 431): 0 lifts the request line's limit (no other value
        # over 8190 is allowed), 32768 fields is its most (nginx takes 1000 where it has max_headers, else as many
        # as its buffers hold), and a field may be as long as the whole head: nginx joins every X-Forwarded-For
        # into one, and adds to it.
        return ["--limit-request-line", "0", "--limit-request-fields", "32768",
                "--limit-request-field_size", str((HEADER_BUFFERS + 1) * HEADER_BUFFER)]
    # Alone, gunicorn buffers up to fields x field size for one head: the most request line it allows, and fields
    # enough for what browsers and scripts send; past these it answers its own HTML page (414, 431).
    return ["--limit-request-line", "8190", "--limit-request-fields", "256",
            "--limit-request-field_size", str(HEADER_BUFFER)]


def nginx_config(run_folder: str, listen: str, upstream: str, max_body: int, job_body: int) -> str:
    """The nginx configuration: buffer whole requests and answers; nginx's own errors in the app's JSON shape."""
    kb = settings.MAX_HEADER_BYTES // 1024
    errors = {  # nginx's status: the status answered, the code and the message (the app's own for 414 and 431)
        413: (413, "file_too_large", f"the request is larger than {max_body // 2**20} MB: upload a smaller image"),
        502: (503, "server_starting", "the app server is not answering yet (starting or restarting): try again "
                                      "in a few seconds"),
        504: (504, "server_timeout", "the app server took too long to answer: try again later"),
        400: (400, "bad_request", "the request could not be read: check its headers and body"),
        404: (404, "not_found", "there is nothing at this address: check the URL"),
        405: (405, "method_not_allowed", "this address does not take that method: see the README for the API"),
        501: (501, "not_implemented", "the request uses a transfer coding this server does not take: send the body "
                                      "as it is, or chunked"),
        505: (505, "http_version_not_supported", "this server speaks HTTP/1.0 and HTTP/1.1: send the request in "
                                                 "one of those"),
        414: (414, "uri_too_long", f"the address is longer than {kb} KB: shorten its query, or send the data in a "
                                   "request's body"),
        # nginx's own status, shown as a plain 400, for a header field over one buffer, a head over all of them,
        # or more fields than max_headers (1000) where nginx has it
        494: (431, "headers_too_large", f"the request's headers are too large ({kb} KB at most), often because of "
                                        "the cookies that other apps on this host name left in the browser: delete "
                                        "those cookies (or open this app at 127.0.0.1 rather than localhost), or "
                                        "send fewer or smaller headers"),
    }
    # Pages at internal addresses, not named locations: nginx cannot redirect a request without a URI (a request
    # line too long or unreadable) to a named one, and answers an HTML 500 instead. Asked for from outside, they
    # are not found (404), and that answer is JSON too.
    error_pages = "\n".join(
        f"        error_page {status} = {ERROR_PAGES}{status};\n"
        f"        location = {ERROR_PAGES}{status} {{ internal; default_type application/json; "
        + ("add_header Retry-After 5 always; " if answered in (503, 504) else "")  # only where trying again helps
        + f"return {answered} '{nginx_quoted(json.dumps({'error': message, 'code': code}))}'; }}"
        for status, (answered, code, message) in errors.items())
    temporary = "\n".join(f"    {kind}_temp_path {run_folder}/{kind};" for kind in
                          ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    proxied = "\n".join(f"            {line}" for line in (
        "proxy_pass http://app;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
        "proxy_set_header Host $http_host;", "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_request_buffering on;", "proxy_buffering on;", "proxy_read_timeout 310s;"))
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
    large_client_header_buffers {HEADER_BUFFERS} {HEADER_BUFFER};
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
{proxied}
        }}
        # A batch job's files come in one request: up to JOB_MAX_MB, buffered to disk before gunicorn sees them.
        location = /jobs {{
            client_max_body_size {job_body};
{proxied}
        }}
{error_pages}
    }}
}}
"""


def nginx_quoted(text: str) -> str:
    """Text to put between single quotes in nginx's configuration."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = {**settings.DEFAULTS, **settings.from_environment(os.environ)}
    except SettingError as error:
        log.error("cannot start: %s", error)
        return error.exit_status
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    nginx = shutil.which("nginx") or next((path for path in ("/usr/sbin/nginx",) if os.path.exists(path)), None)
    public = listen_address(config["HOST"], config["PORT"])
    if nginx is None:
        log.warning("nginx is not installed: gunicorn serves %s alone, and slow clients can take all its threads "
                    "(install nginx, e.g. apt-get install nginx)", public)
        return run([[gunicorn, "--bind", public, *GUNICORN_OPTIONS, *gunicorn_limits(False), "app:app"]])
    run_folder = tempfile.mkdtemp(prefix="image-assistant-nginx-")
    os.chmod(run_folder, 0o755)  # nginx's workers may run as another user, and write request bodies here
    try:
        inner = f"127.0.0.1:{free_loopback_port()}"
        # Twice the upload limit: nginx refuses only what is far too large; the app answers the rest itself.
        max_body = 2 * (config["MAX_IMAGE_BYTES"] + 64 * 1024)
        job_body = 2 * (config["JOB_MAX_MB"] << 20) + config["JOB_MAX_FILES"] * 1024  # and a part's head a file
        with open(os.path.join(run_folder, "nginx.conf"), "w", encoding="utf-8") as file:
            file.write(nginx_config(run_folder, public, inner, max_body, job_body))
        log.info("nginx listens on %s and buffers requests for gunicorn on %s", public, inner)
        # One more proxy in front of the app, this nginx: the clients' addresses come from its X-Forwarded-For.
        os.environ["TRUSTED_PROXIES"] = str(config["TRUSTED_PROXIES"] + 1)
        return run([[gunicorn, "--bind", inner, *GUNICORN_OPTIONS, *gunicorn_limits(True), "app:app"],
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
