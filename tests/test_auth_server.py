"""AUTH=on against real server processes on 127.0.0.1: `python app.py` on the JSON store, and two replicas on one
PostgreSQL database; accounts and keys made with the real `flask --app app users|keys` commands.

test_auth.py checks the same rules in-process through Flask's test client; here they must hold over HTTP, across
processes (what one replica or the command line changes, the other replica sees at once), and no secret may be
left in clear in any answer, log or stored row.
"""

import os
import re
import secrets
import subprocess
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import BadSignature

import servers
import settings
from accounts import hashed
from conftest import HUGGING_FACE, create_app, image_bytes
from fake_hf import chance_proof

pytestmark = pytest.mark.timeout(240)  # real processes

FLASK = os.path.join(os.path.dirname(servers.PYTHON), "flask")
SECRET_KEY = "auth-server-tests-" + secrets.token_hex(8)
HF_KEYS = chance_proof("hf_authQuillSnowyRiver", "hf_authMossyLynxWhirl")
REALM = 'Bearer realm="image-assistant"'
PAGE_GETS = ("pages.", "account.keys_page")  # a browser asking for these is sent to the sign-in form
TIMEOUT = 30  # seconds for any one request to a server on 127.0.0.1
SLOW = 90  # seconds for an upload or a generation (the tiny models on a busy machine)


def password() -> str:
    """A fresh password, long enough, that no log or file could hold by chance."""
    return "pw-" + secrets.token_urlsafe(18)


@dataclass
class Seen:
    """Every answer the tests saw and every secret they used, for the scans of test_no_secret_*."""

    bodies: list = field(default_factory=list)  # (request, headers and body) of every answer but a key's creation
    shown_once: list = field(default_factory=list)  # (key, text): the answer that made the key, which shows it
    secrets: dict = field(default_factory=dict)  # secret -> what it is
    command_output: list = field(default_factory=list)  # (command, stdout + stderr) of every CLI run

    def secret(self, value: str, what: str) -> str:
        self.secrets[value] = what
        return value

    def note(self, method: str, url: str, response: requests.Response, cookie: str | None) -> None:
        head = "".join(f"{name}: {value}\n" for name, value in response.headers.items())
        text = head + response.content.decode("utf-8", "replace")
        made_key = method == "POST" and urlsplit(url).path == "/keys" and response.status_code == 201
        if made_key:
            key = self.secret(response.json()["key"], "an API key made by POST /keys")
            self.shown_once.append((key, text))
        else:
            self.bodies.append((f"{method} {url} -> {response.status_code}", text))
        if cookie:  # the sign-in session's token, which Flask-Login keeps in the signed (not encrypted) cookie
            try:
                token = session_content(cookie).get("_user_id")
            except BadSignature:  # a cookie a test forged
                token = None
            if token:
                self.secret(token, "a sign-in session's token")


def error_code(body: dict) -> str:
    """An error's code: {"error", "code"}, or on /v1 OpenAI's {"error": {"message", "type", "param", "code"}}."""
    return body["error"]["code"] if isinstance(body["error"], dict) else body["code"]


def session_content(cookie: str) -> dict:
    """What a session cookie holds, read with the servers' SECRET_KEY as Flask reads it."""
    probe = Flask("probe")
    probe.secret_key = SECRET_KEY
    return SecureCookieSessionInterface().get_signing_serializer(probe).loads(cookie)


def session_cookie(content: dict) -> str:
    """A session cookie holding content, signed with the servers' SECRET_KEY."""
    probe = Flask("probe")
    probe.secret_key = SECRET_KEY
    return SecureCookieSessionInterface().get_signing_serializer(probe).dumps(content)


class Client:
    """A client of servers on 127.0.0.1 only (any of them: one cookie jar), every request bounded in time and
    every answer noted in seen. key: sent as `Authorization: Bearer`."""

    def __init__(self, seen: Seen, key: str | None = None, cookie: str | None = None):
        self.seen = seen
        self.http = requests.Session()
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"
        if cookie:
            self.http.cookies.set("session", cookie, domain="127.0.0.1")

    def request(self, method: str, url: str, **kwargs) -> requests.Response:
        assert urlsplit(url).hostname == "127.0.0.1", url
        kwargs.setdefault("timeout", TIMEOUT)
        response = self.http.request(method, url, allow_redirects=False, **kwargs)
        self.seen.note(method, url, response, self.cookie())
        return response

    def get(self, url, **kwargs):
        return self.request("GET", url, **kwargs)

    def post(self, url, **kwargs):
        return self.request("POST", url, **kwargs)

    def delete(self, url, **kwargs):
        return self.request("DELETE", url, **kwargs)

    def cookie(self) -> str | None:
        return next((cookie.value for cookie in self.http.cookies if cookie.name == "session"), None)


@dataclass
class Server:
    """One server process: where it answers, its environment (shared with the commands), its log."""

    base: str
    env: dict
    log_path: str
    process: subprocess.Popen


@contextmanager
def app_server(name: str, data, tiny_blip, extra: dict | None = None):
    """`python app.py` with AUTH=on on its own port (the tiny models, the tests' Hugging Face router), stopped at
    the end."""
    port = servers.free_port()
    env = {"CAPTION_MODEL": tiny_blip["caption"], "VQA_MODEL": tiny_blip["vqa"], "HOST": "127.0.0.1",
           "PORT": str(port), "AUTH": "on", "SECRET_KEY": SECRET_KEY, "UPLOAD_FOLDER": str(data / "uploads"),
           "GENERATED_FOLDER": str(data / "uploads" / "generated"), "HISTORY_FILE": str(data / "history.json"),
           "CAPTION_MAX_LENGTH": "8", "VQA_MAX_LENGTH": "4", "HF_API_KEYS": ",".join(HF_KEYS),
           "HF_ROUTER_URL": HUGGING_FACE.url, "HF_PROVIDER": "hf-inference", "SD_MODEL": "some/model",
           "RATE_LIMIT": "2000/minute", **(extra or {})}  # far above what the tests send from one address
    log_path = str(data.parent / f"{name}.log")
    process = servers.start([servers.PYTHON, "app.py"], env, log_path)
    try:
        yield Server(f"http://127.0.0.1:{port}", env, log_path, process)
    finally:
        servers.stop(process)


def command(server: Server, seen: Seen, *args: str, stdin: str | None = None) -> str:
    """`flask --app app ARGS` on the server's store and settings; its standard output (it must succeed)."""
    done = subprocess.run([FLASK, "--app", "app", *args], cwd=servers.ROOT, input=stdin, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "HF_HUB_OFFLINE": "1", **server.env})
    seen.command_output.append((" ".join(args), done.stdout + done.stderr))
    assert done.returncode == 0, f"flask --app app {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def new_account(server: Server, seen: Seen, name: str, admin: bool = False) -> str:
    """An account made by `flask --app app users create NAME`, the password on standard input; its password."""
    secret = seen.secret(password(), f"{name}'s password")
    said = command(server, seen, "users", "create", name, *(["--admin"] if admin else []), stdin=secret + "\n")
    assert f"account '{name}'" in said
    return secret


def new_key(server: Server, seen: Seen, name: str) -> tuple[str, str]:
    """A key made by `flask --app app keys create NAME`: (key_id, the key from the last line)."""
    lines = command(server, seen, "keys", "create", name, "--label", "cli").strip().splitlines()
    key_id = re.search(r"created the key (\w+) for", lines[-2]).group(1)
    return key_id, seen.secret(lines[-1].strip(), f"an API key of {name} made by the command")


def new_password(server: Server, seen: Seen, name: str) -> str:
    """`flask --app app users password NAME`, the new password on standard input; the new password."""
    secret = seen.secret(password(), f"{name}'s new password")
    command(server, seen, "users", "password", name, stdin=secret + "\n")
    return secret


def sign_in(seen: Seen, base: str, name: str, secret: str) -> Client:
    """A client signed in by POST /login with JSON, as a script signs in."""
    client = Client(seen)
    response = client.post(base + "/login", json={"username": name, "password": secret})
    assert response.status_code == 200, response.text
    assert response.json()["user"]["name"] == name and client.cookie()
    return client


def refused(response: requests.Response) -> bool:
    """Whether an answer is the 401 of a request without a valid account."""
    return (response.status_code == 401 and response.headers.get("WWW-Authenticate") == REALM
            and error_code(response.json()) == "unauthorized")


def upload(client: Client, base: str) -> dict:
    response = client.post(base + "/upload?include_image=0", files={"image": ("a.png", image_bytes(), "image/png")},
                           timeout=SLOW)
    assert response.status_code == 201, response.text
    return response.json()


def generate(client: Client, base: str, description: str = "a lighthouse") -> requests.Response:
    return client.post(base + "/generate", json={"description": description}, timeout=SLOW)


@pytest.fixture(scope="module")
def seen():
    return Seen()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_blip):
    """One AUTH=on server on the JSON store, for the module."""
    data = tmp_path_factory.mktemp("auth-json") / "data"
    with app_server("json", data, tiny_blip) as started:
        servers.wait_until_up(started.base + "/healthz", started.process)
        yield started


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, tiny_blip, postgres_server):
    """Two AUTH=on replicas on one PostgreSQL database (one data folder, one SECRET_KEY), GENERATIONS_PER_DAY=2."""
    data = tmp_path_factory.mktemp("auth-replicas") / "data"
    extra = {"DATABASE_URL": postgres_server.create_database(), "GENERATIONS_PER_DAY": "2"}
    with ExitStack() as stack:
        started = [stack.enter_context(app_server(f"replica-{index}", data, tiny_blip, extra))
                   for index in range(2)]
        for replica in started:
            servers.wait_until_up(replica.base + "/healthz", replica.process)
        yield started


# 1. One server


def test_anonymous_requests_to_every_route_are_refused(server, seen):
    app = create_app(settings.from_environment(server.env), services=False)  # the server's own routes
    anonymous, checked = Client(seen), set()
    for rule in app.url_map.iter_rules():  # every route, so that a new one cannot be forgotten
        values = {name: "style.css" if rule.endpoint == "static" else "x" for name in rule.arguments}
        path = rule.build(values, append_unknown=False)[1]
        for method in sorted(rule.methods - {"OPTIONS"}):
            response = anonymous.request(method, server.base + path)
            where = f"{method} {path}: {response.status_code} {response.text[:200]}"
            if rule.endpoint == "static":
                assert response.status_code == 200, where
            elif rule.endpoint == "api.healthz":
                assert response.status_code in (200, 503), where
                assert method == "HEAD" or set(response.json()) == {"status"}, where  # the details are for admins
            elif rule.endpoint == "account.login_page":
                assert response.status_code == 200 and "text/html" in response.headers["Content-Type"], where
            elif rule.endpoint == "account.login":
                # a form post without the page's token: refused as such, never as 'unauthorized'
                assert response.status_code == 400 and response.json()["code"] == "csrf_failed", where
            elif method == "GET" and rule.endpoint.startswith(PAGE_GETS):
                location = urlsplit(response.headers.get("Location", ""))
                assert response.status_code == 302 and location.path == "/login", where
                assert parse_qs(location.query)["next"] == [path], where
            elif method == "HEAD":
                assert response.status_code == 401 and response.headers["WWW-Authenticate"] == REALM, where
            else:
                assert refused(response), where
                assert response.headers["Content-Type"] == "application/json", where
            checked.add((method, rule.endpoint))
    assert len(checked) > 25
    assert {"api.upload", "api.generate", "api.history", "account.list_keys", "pages.index"} <= {
        endpoint for _, endpoint in checked}


def test_a_key_or_cookie_the_server_did_not_make_is_refused(server, seen):
    forged_key = Client(seen, key="ia_" + secrets.token_urlsafe(32))
    assert refused(forged_key.get(server.base + "/history"))
    assert refused(Client(seen).get(server.base + "/history", headers={"X-API-Key": "ia_" + "x" * 43}))
    # Signed with the right SECRET_KEY, but naming a sign-in session the server never started.
    made_up = Client(seen, cookie=session_cookie({"_user_id": secrets.token_urlsafe(32), "_fresh": True}))
    assert refused(made_up.get(server.base + "/history"))
    foreign = Client(seen, cookie="eyJfdXNlcl9pZCI6IngifQ.ZZZZZZ.badsignaturebadsignature")
    assert refused(foreign.get(server.base + "/history"))


@pytest.fixture(scope="module")
def made_by_grace(server, seen):
    """grace (signed in with a password) uploads an image, asks about it and draws one; linus has a key made by
    the command, ada is an admin signed in."""
    passwords = {name: new_account(server, seen, name, admin=name == "ada") for name in ("grace", "linus", "ada")}
    grace = sign_in(seen, server.base, "grace", passwords["grace"])
    image = upload(grace, server.base)
    asked = grace.post(server.base + "/question", json={"image_id": image["image_id"], "question": "what is it?"},
                       timeout=SLOW)
    assert asked.status_code == 200, asked.text
    drawn = generate(grace, server.base, "grace's lighthouse")
    assert drawn.status_code == 201, drawn.text
    return {"grace": grace, "linus": Client(seen, key=new_key(server, seen, "linus")[1]),
            "ada": sign_in(seen, server.base, "ada", passwords["ada"]), "image": image, "generation": drawn.json()}


def test_an_account_reaches_nothing_of_anothers(server, made_by_grace):
    base, linus, grace = server.base, made_by_grace["linus"], made_by_grace["grace"]
    image_id, image_url = made_by_grace["image"]["image_id"], made_by_grace["image"]["image_url"]
    generation_id = made_by_grace["generation"]["generation_id"]
    generation_url = made_by_grace["generation"]["image_url"]
    attempts = [
        linus.get(f"{base}/images/{image_id}"), linus.get(base + image_url),
        linus.get(f"{base}/generations/{generation_id}"), linus.get(base + generation_url),
        linus.get(f"{base}/page/images/{image_id}"),
        linus.post(base + "/question", json={"image_id": image_id, "question": "what is it?"}, timeout=SLOW),
        linus.delete(f"{base}/images/{image_id}"), linus.delete(f"{base}/generations/{generation_id}"),
    ]
    for response in attempts:
        assert response.status_code == 404, (response.request.method, response.request.url, response.text)
    unknown = "00000000-0000-0000-0000-000000000000"
    missing = linus.get(f"{base}/images/{unknown}").json()
    assert linus.get(f"{base}/images/{image_id}").json() == {  # as for an id that does not exist
        **missing, "error": missing["error"].replace(unknown, image_id)}
    assert linus.get(base + image_url).json() == linus.get(base + f"/uploads/{unknown}.png").json()
    listed = linus.get(base + "/history").json()
    assert listed["images"] == [] and listed["generations"] == [] and listed["total_images"] == 0
    assert linus.delete(base + "/history").status_code == 204  # clears only linus's (nothing)
    for response in (grace.get(f"{base}/images/{image_id}"), grace.get(base + image_url),
                     grace.get(f"{base}/generations/{generation_id}"), grace.get(base + generation_url)):
        assert response.status_code == 200, response.text  # all still there, for grace
    assert [entry["question"] for entry in grace.get(f"{base}/images/{image_id}").json()["questions"]] == [
        "what is it?"]
    anonymous = Client(grace.seen)
    for path in (f"/images/{image_id}", image_url, f"/generations/{generation_id}", generation_url):
        assert refused(anonymous.get(base + path)), path


def test_an_admin_reads_anothers_images_files_and_generations_and_deletes_only_its_own(server, made_by_grace):
    base, ada, grace = server.base, made_by_grace["ada"], made_by_grace["grace"]
    image, generation = made_by_grace["image"], made_by_grace["generation"]
    read = ada.get(f"{base}/images/{image['image_id']}")
    assert read.status_code == 200 and read.json()["caption"] == image["caption"]
    file = ada.get(base + image["image_url"])
    assert file.status_code == 200 and file.content == grace.get(base + image["image_url"]).content
    drawn = ada.get(f"{base}/generations/{generation['generation_id']}")
    assert drawn.status_code == 200 and drawn.json()["description"] == "grace's lighthouse"
    assert ada.get(base + generation["image_url"]).status_code == 200
    assert ada.get(base + "/history").json()["images"] == []  # an admin's history is its own
    assert ada.delete(f"{base}/images/{image['image_id']}").status_code == 404
    assert grace.get(f"{base}/images/{image['image_id']}").status_code == 200


def test_an_admin_reads_anothers_thread(server, made_by_grace):
    # README: "another account's image, generation, stored file, thread or DELETE answers 404 [...] An admin may
    # read everything": the questions grace asked about her image included.
    image_id = made_by_grace["image"]["image_id"]
    read = made_by_grace["ada"].get(f"{server.base}/images/{image_id}").json()
    assert [entry["question"] for entry in read["questions"]] == ["what is it?"]


def test_sign_out_ends_the_session_on_the_server(server, seen):
    secret = new_account(server, seen, "hopper")
    client = sign_in(seen, server.base, "hopper", secret)
    saved = client.cookie()
    assert Client(seen, cookie=saved).get(server.base + "/history").status_code == 200  # a copy works, before
    assert client.post(server.base + "/logout").status_code == 204
    assert refused(client.get(server.base + "/history"))
    assert refused(Client(seen, cookie=saved).get(server.base + "/history"))  # the copy, after
    assert refused(Client(seen, cookie=saved).post(server.base + "/keys", json={"label": "after"}))


# 2. Two replicas on PostgreSQL


def test_a_key_revoked_through_one_replica_is_refused_at_once_by_the_other(replicas, seen):
    a, b = replicas
    secret = new_account(a, seen, "rev")
    owner = sign_in(seen, a.base, "rev", secret)
    made = owner.post(a.base + "/keys", json={"label": "script"})
    assert made.status_code == 201, made.text
    script = Client(seen, key=made.json()["key"])
    assert script.get(b.base + "/history").status_code == 200
    assert owner.delete(f"{a.base}/keys/{made.json()['key_id']}").status_code == 204
    assert refused(script.get(b.base + "/history"))
    assert refused(script.get(a.base + "/history"))
    # The same through the command line: `flask --app app keys revoke KEY_ID`
    key_id, key = new_key(b, seen, "rev")
    script = Client(seen, key=key)
    assert script.get(b.base + "/history").status_code == 200 and script.get(a.base + "/history").status_code == 200
    command(a, seen, "keys", "revoke", key_id)
    assert refused(script.get(b.base + "/history")) and refused(script.get(a.base + "/history"))
    assert owner.get(b.base + "/keys").json()["keys"] == []


def test_a_password_changed_by_the_command_ends_sessions_and_keys_on_both_replicas(replicas, seen):
    a, b = replicas
    old = new_account(a, seen, "pat")
    on_a, on_b = sign_in(seen, a.base, "pat", old), sign_in(seen, b.base, "pat", old)
    script = Client(seen, key=new_key(a, seen, "pat")[1])
    signed = [on_a, on_b, script]
    for client in signed:
        for replica in (a, b):  # every session and key works on both before
            assert client.get(replica.base + "/history").status_code == 200
    new = new_password(b, seen, "pat")
    for client in signed:
        for replica in (a, b):
            assert refused(client.get(replica.base + "/history")), (replica.base, client.cookie())
    wrong = Client(seen).post(a.base + "/login", json={"username": "pat", "password": old})
    assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_credentials"
    assert sign_in(seen, b.base, "pat", new).get(a.base + "/history").status_code == 200


def test_generations_per_day_holds_across_replicas(replicas, seen, fake_api):
    a, b = replicas
    new_account(a, seen, "quota")
    drawer = Client(seen, key=new_key(a, seen, "quota")[1])
    for index in range(2):
        drawn = generate(drawer, a.base, f"picture {index}")
        assert drawn.status_code == 201, drawn.text
    assert len(fake_api.requests) == 2
    third = generate(drawer, b.base, "one too many")
    assert third.status_code == 429, third.text
    assert third.json()["code"] == "quota_exceeded"
    assert 1 <= int(third.headers["Retry-After"]) <= 24 * 3600
    assert len(fake_api.requests) == 2  # refused before any provider was called
    assert drawer.get(b.base + "/history").json()["total_generations"] == 2


# 3. No secret in clear


def use_accounts(server: Server, other: Server, seen: Seen, name: str) -> list[str]:
    """Everything that handles a secret: accounts made by the command, sign-ins (JSON and the form, one with a
    wrong password), keys made by POST /keys and the command and used on both servers, a password changed, a
    sign-out. Returns the SHA-256 of a key and of a session token left live, whose rows the store must hold."""
    base = server.base
    old = new_account(server, seen, name)
    wrong = seen.secret(password(), "a mistyped password")
    assert Client(seen).post(base + "/login", json={"username": name, "password": wrong}).status_code == 401
    browser = Client(seen)
    token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get(base + "/login").text).group(1)
    form = browser.post(base + "/login", data={"username": name, "password": old, "csrf_token": token})
    assert form.status_code == 302 and browser.get(base + "/").status_code == 200
    client = sign_in(seen, base, name, old)
    made = client.post(base + "/keys", json={"label": "laptop"})
    assert made.status_code == 201
    made_key = Client(seen, key=made.json()["key"])
    command_key = Client(seen, key=new_key(server, seen, name)[1])
    for script in (made_key, command_key):
        for where in (server, other):
            assert script.get(where.base + "/history").status_code == 200
            assert script.get(where.base + "/keys").status_code == 200
    upload(made_key, other.base)
    assert Client(seen).get(base + "/history", headers={"X-API-Key": made.json()["key"]}).status_code == 200
    new = new_password(other, seen, name)
    assert refused(made_key.get(base + "/history")) and refused(client.get(other.base + "/history"))
    assert Client(seen).post(base + "/login", json={"username": name, "password": old}).status_code == 401
    again = sign_in(seen, other.base, name, new)
    assert again.get(base + "/keys").json()["keys"] == []
    kept = again.post(base + "/keys", json={"label": "kept"})
    assert kept.status_code == 201
    leaving = sign_in(seen, base, name, new)
    assert leaving.post(base + "/logout").status_code == 204
    return [hashed(kept.json()["key"]), hashed(session_content(again.cookie())["_user_id"])]


def assert_no_secret(seen: Seen, places: dict) -> None:
    """No secret seen in any answer (but the one that showed a new key, which holds only that key), in the
    commands' output (but a key's creation, which prints it), or in places ({name: text})."""
    kinds = set(seen.secrets.values())
    assert len(seen.secrets) >= 6 and seen.bodies and seen.shown_once and "a sign-in session's token" in kinds
    found = []
    for secret, what in seen.secrets.items():
        for request, text in seen.bodies:
            if secret in text:
                found.append(f"{what} in the answer to {request}")
        for key, text in seen.shown_once:
            if secret in text and secret != key:
                found.append(f"{what} in the answer that made the key {key[:9]}…")
        for args, output in seen.command_output:
            if secret in output and not (args.startswith("keys create") and "made by the command" in what):
                found.append(f"{what} in the output of `flask --app app {args}`")
        for place, text in places.items():
            if secret in text:
                found.append(f"{what} in {place}")
    for request, text in seen.bodies:
        if "scrypt:" in text or "password_hash" in text or "key_hash" in text or "session_hash" in text:
            found.append(f"a hash in the answer to {request}")
    assert not found, "\n".join(found)


def test_no_secret_in_clear_with_the_json_store(server, seen):
    live = use_accounts(server, server, seen, "sam")
    history = open(server.env["HISTORY_FILE"], encoding="utf-8").read()
    assert all(digest in history for digest in live) and "scrypt:" in history  # the rows are there, hashed
    places = {"the server's log": open(server.log_path, encoding="utf-8", errors="replace").read(),
              "the history file": history}
    folder = os.path.dirname(server.env["HISTORY_FILE"])
    for name in os.listdir(folder):  # files set aside beside the history, if any
        path = os.path.join(folder, name)
        if os.path.isfile(path) and name.startswith("history") and path != server.env["HISTORY_FILE"]:
            places[name] = open(path, encoding="utf-8", errors="replace").read()
    assert_no_secret(seen, places)


def database_dump(url: str) -> dict:
    """Every row of every table of a PostgreSQL database, as text: {table: rows}."""
    import psycopg

    parts = urlsplit(url)
    dump = {}
    with psycopg.connect(host=parts.hostname, port=parts.port, user=parts.username, dbname=parts.path.lstrip("/"),
                         connect_timeout=10) as db:
        tables = [name for (name,) in db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        for table in tables:
            rows = db.execute(f'SELECT t::text FROM "{table}" AS t').fetchall()
            dump[table] = "\n".join(row for (row,) in rows)
    return dump


def test_no_secret_in_clear_in_the_postgresql_rows(replicas, seen, postgres_server):
    a, b = replicas
    key_digest, session_digest = use_accounts(a, b, seen, "kim")
    dump = database_dump(a.env["DATABASE_URL"])
    assert {"users", "api_keys", "sessions", "images"} <= set(dump) and "scrypt:" in dump["users"]
    assert key_digest in dump["api_keys"] and session_digest in dump["sessions"]  # the rows are there, hashed
    places = {f"the table {table}": rows for table, rows in dump.items()}
    for replica in (a, b):
        places[f"the log of {replica.base}"] = open(replica.log_path, encoding="utf-8", errors="replace").read()
    places["PostgreSQL's log"] = open(os.path.join(postgres_server.folder, "server.log"), errors="replace").read()
    assert_no_secret(seen, places)
