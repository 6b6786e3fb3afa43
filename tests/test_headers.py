"""Headers as browsers send them: up to MAX_HEADER_BYTES served, past it a JSON 431 (and a JSON 414 for a long
address), under `make run` (serve.py: nginx in front of gunicorn), gunicorn alone and werkzeug; real servers."""

import http.client
import json
import os
import shutil
import socket

import pytest

import serve
import servers
import settings
from servers import Serving
from test_server import data_env

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
LIMIT = settings.MAX_HEADER_BYTES
KB = 1024


def get(port: int, target: str = "/healthz", fields=()) -> tuple[int, str, bytes]:
    """A GET with exactly Host and these fields; its status, Content-Type and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        for name, value in [("Host", f"127.0.0.1:{port}"), *fields]:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def raw(port: int, head: bytes) -> bytes:
    """Send bytes as they are, read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def json_error(answer, status: int, code: str) -> dict:
    """The answer's JSON error, checked: its status, a JSON Content-Type and body, and its code."""
    got, content_type, body = answer
    assert got == status, body[:300]
    assert content_type.startswith("application/json"), (content_type, body[:300])
    error = json.loads(body)
    assert error["code"] == code and error["error"]
    return error


def assert_served(answer) -> None:
    """The answer is the app's own 200."""
    got, content_type, body = answer
    assert got == 200, body[:300]
    assert content_type.startswith(("application/json", "text/html"))


def cookie(size: int) -> tuple[str, str]:
    """A Cookie field of size bytes as the app counts it ("Cookie: " + value + CRLF)."""
    return "Cookie", "a=" + "x" * (size - len("Cookie: \r\n") - 2)


def small_fields(count: int, total: int) -> list[tuple[str, str]]:
    """count distinct fields of about total bytes together."""
    each = total // count - len("X-Field-0000: \r\n")
    return [(f"X-Field-{i:04}", "v" * each) for i in range(count)]


# Sent through serve.py and through gunicorn alone: each is served, as browsers and scripts send them.
SERVED = {
    "a browser's 10 KB of cookies": dict(fields=[cookie(10 * KB)]),
    "31 KB in one cookie": dict(fields=[cookie(31 * KB)]),
    "31 KB in 200 small fields": dict(fields=small_fields(200, 31 * KB)),
    "a 6 KB address": dict(target="/healthz?q=" + "a" * 6 * KB),
}

# Refused through serve.py: by nginx (past its buffers) or by the app (between its limit and nginx's).
REFUSED = {
    "33 KB in one header": (dict(fields=[cookie(33 * KB)]), 431, "headers_too_large"),
    "32.5 KB in one header": (dict(fields=[cookie(LIMIT + 512)]), 431, "headers_too_large"),
    "100 KB in one header": (dict(fields=[cookie(100 * KB)]), 431, "headers_too_large"),
    "100 KB in 100 fields": (dict(fields=small_fields(100, 100 * KB)), 431, "headers_too_large"),
    "80 KB in 5000 fields of 16 bytes": (dict(fields=small_fields(5000, 80 * KB)), 431, "headers_too_large"),
    "a 40 KB address": (dict(target="/healthz?q=" + "a" * 40 * KB), 414, "uri_too_long"),
    "a 32.5 KB address": (dict(target="/healthz?q=" + "a" * (LIMIT + 512)), 414, "uri_too_long"),
}


@pytest.fixture(scope="module")
def make_run(tmp_path_factory, tiny_blip):
    """serve.py, as `make run` starts it (nginx in front of gunicorn), on the tiny models; its port."""
    if not os.path.exists(NGINX):
        if os.environ.get("CI") == "true":
            raise RuntimeError("nginx is missing: `make test` installs Debian's nginx package")
        pytest.skip("nginx is not installed (make test installs it)")
    folder = tmp_path_factory.mktemp("make-run")
    port = servers.free_port()
    env = {**data_env(folder, port), "CAPTION_MODEL": tiny_blip["caption"], "VQA_MODEL": tiny_blip["vqa"]}
    process = servers.start([servers.PYTHON, "serve.py"], env, str(folder / "serve.log"))
    try:
        servers.wait_until_ready(f"http://127.0.0.1:{port}/healthz", process)
        yield port
    finally:
        servers.stop(process)


@pytest.fixture(scope="module")
def gunicorn_alone(tmp_path_factory, tiny_blip):
    """gunicorn alone with the options serve.py gives it where nginx is missing; its port."""
    folder = tmp_path_factory.mktemp("gunicorn-alone")
    port = servers.free_port()
    env = {**data_env(folder, port), "CAPTION_MODEL": tiny_blip["caption"], "VQA_MODEL": tiny_blip["vqa"]}
    command = [servers.GUNICORN, "--bind", f"127.0.0.1:{port}", *serve.GUNICORN_OPTIONS, *serve.gunicorn_limits(False),
               "app:app"]
    process = servers.start(command, env, str(folder / "gunicorn.log"))
    try:
        servers.wait_until_ready(f"http://127.0.0.1:{port}/healthz", process)
        yield port
    finally:
        servers.stop(process)


@pytest.mark.parametrize("request_", SERVED.values(), ids=SERVED.keys())
def test_make_run_serves_headers_as_browsers_send_them(make_run, request_):
    assert_served(get(make_run, **request_))


def test_make_run_serves_the_page_with_a_browsers_cookies(make_run):
    status, content_type, body = get(make_run, "/", fields=[cookie(10 * KB)])
    assert status == 200 and content_type.startswith("text/html") and b"<form" in body


def test_make_run_serves_a_32_kb_address_with_32_kb_of_headers(make_run):
    # Both at once: nginx's buffers hold the longest request line and the most fields the app takes.
    target = "/healthz?q=" + "a" * (LIMIT - len("/healthz?q="))
    assert_served(get(make_run, target, fields=[cookie(16 * KB), *small_fields(10, 15 * KB)]))


@pytest.mark.parametrize("request_, status, code", REFUSED.values(), ids=REFUSED.keys())
def test_make_run_refuses_larger_heads_in_json(make_run, request_, status, code):
    json_error(get(make_run, **request_), status, code)


def test_nginx_and_the_app_refuse_in_the_same_words(make_run):
    by_nginx = json_error(get(make_run, fields=[cookie(100 * KB)]), 431, "headers_too_large")
    by_app = json_error(get(make_run, fields=[cookie(LIMIT + 1)]), 431, "headers_too_large")
    assert by_nginx == by_app and f"{LIMIT // KB} KB" in by_app["error"] and "cookies" in by_app["error"]
    by_nginx = json_error(get(make_run, "/?q=" + "a" * 40 * KB), 414, "uri_too_long")
    by_app = json_error(get(make_run, "/?q=" + "a" * LIMIT), 414, "uri_too_long")
    assert by_nginx == by_app


def test_joined_forwarded_for_fields_reach_the_app(make_run):
    # nginx joins every X-Forwarded-For into one field, longer than any it read: gunicorn must still take it.
    fields = [("X-Forwarded-For", "1" * 30 * KB)] * 3
    json_error(get(make_run, fields=fields), 431, "headers_too_large")


def test_an_unreadable_request_line_is_a_json_400(make_run):
    # A request line nginx cannot read leaves the request without a URI: its error page must still be JSON.
    answer = raw(make_run, b"GARBAGE\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["code"] == "bad_request"


@pytest.mark.parametrize("head, status, code", [
    (b"TRACE /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405, "method_not_allowed"),
    (b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not_implemented"),
    (b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", 505, "http_version_not_supported"),
], ids=["trace", "gzip-transfer-coding", "http-9.9"])
def test_what_nginx_refuses_itself_is_json(make_run, head, status, code):
    answer = raw(make_run, head)
    status_line, _, body = answer.partition(b"\r\n\r\n")
    assert status_line.startswith(f"HTTP/1.1 {status}".encode()) and b"application/json" in status_line, answer[:300]
    assert json.loads(body)["code"] == code


def test_nginx_error_pages_are_not_reachable_from_outside(make_run):
    json_error(get(make_run, serve.ERROR_PAGES + "494"), 404, "not_found")


@pytest.mark.parametrize("request_", SERVED.values(), ids=SERVED.keys())
def test_gunicorn_alone_serves_headers_as_browsers_send_them(gunicorn_alone, request_):
    assert_served(get(gunicorn_alone, **request_))


def test_gunicorn_alone_refuses_past_the_limit_in_json(gunicorn_alone):
    json_error(get(gunicorn_alone, fields=[cookie(LIMIT + 1)]), 431, "headers_too_large")
    json_error(get(gunicorn_alone, fields=small_fields(200, LIMIT + 200)), 431, "headers_too_large")


def test_werkzeug_serves_exactly_up_to_the_limit(make_app):
    with Serving(make_app()) as serving:
        host = len(f"Host: 127.0.0.1:{serving.port}\r\n")
        assert_served(get(serving.port, fields=[cookie(LIMIT - host)]))
        json_error(get(serving.port, fields=[cookie(LIMIT - host + 1)]), 431, "headers_too_large")
        assert_served(get(serving.port, fields=small_fields(90, 31 * KB)))  # http.server reads 100 at most
        assert_served(get(serving.port, "/healthz?q=" + "a" * (LIMIT - len("/healthz?q="))))
        json_error(get(serving.port, "/healthz?q=" + "a" * (LIMIT + 1 - len("/healthz?q="))), 414, "uri_too_long")


def test_the_app_counts_each_field_as_name_colon_value_crlf(make_app):
    client = make_app().test_client()
    others = len("Host: localhost\r\n") + len("User-Agent: test\r\n")  # the test client's own, one given here
    fill = LIMIT - others - len("X-Fill: \r\n")
    assert client.get("/healthz", headers={"User-Agent": "test", "X-Fill": "v" * fill}).status_code == 200
    refused = client.get("/healthz", headers={"User-Agent": "test", "X-Fill": "v" * (fill + 1)})
    assert refused.status_code == 431 and refused.is_json and refused.json["code"] == "headers_too_large"


def test_the_size_is_checked_before_the_host(make_app):
    # An untrusted host with too large a head is told about the head first: that is what keeps it from any answer.
    client = make_app().test_client()
    refused = client.get("/", headers={"Host": "evil.example", "X-Fill": "v" * LIMIT})
    assert refused.status_code == 431 and refused.json["code"] == "headers_too_large"
    assert client.get("/", headers={"Host": "evil.example"}).json["code"] == "untrusted_host"
