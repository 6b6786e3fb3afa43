"""AUTH: who may use the app. The identity room is tested in test_accounts.py; this is the web's side (guards.py,
account_views.py) through the Flask test client."""

import io
import logging
import re

import pytest

import settings
from accounts import Accounts
from conftest import image_bytes

PASSWORD = "correct horse battery staple"


@pytest.mark.parametrize("host, auth, on", [
    ("127.0.0.1", "auto", False), ("127.9.9.9", "auto", False), ("::1", "auto", False), ("localhost", "auto", False),
    ("0.0.0.0", "auto", True), ("192.168.1.20", "auto", True), ("127.0.0.1", "on", True), ("0.0.0.0", "off", False)])
def test_auth_auto_is_on_unless_the_server_listens_on_loopback_only(host, auth, on):
    assert settings.auth_on({"HOST": host, "AUTH": auth}) is on


def test_auth_off_on_a_network_address_warns_once(make_app, caplog):
    with caplog.at_level(logging.WARNING, logger="guards"):
        make_app(AUTH="off", HOST="0.0.0.0", TRUSTED_HOSTS="localhost")
    assert [record.getMessage() for record in caplog.records if "AUTH=off" in record.getMessage()]


@pytest.fixture
def auth_app(make_app):
    app = make_app(AUTH="on")
    identity: Accounts = app.extensions["accounts"]
    identity.create_user("ada", PASSWORD, "admin")
    identity.create_user("grace", PASSWORD)
    return app


def form_token(client) -> str:
    """The CSRF token of the sign-in form, as a browser gets it."""
    page = client.get("/login").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def signed_in(app, name):
    client = app.test_client()
    response = client.post("/login", json={"username": name, "password": PASSWORD})
    assert response.status_code == 200, response.json
    return client


def test_every_route_but_the_public_ones_asks_for_an_account(auth_app):
    client = auth_app.test_client()
    checked = 0
    for rule in auth_app.url_map.iter_rules():  # every route, so that a new one cannot be forgotten
        if rule.endpoint in ("static", "api.healthz", "account.login", "account.login_page"):
            continue
        path = rule.build({name: "x" for name in rule.arguments}, append_unknown=False)[1]
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            response = client.open(path, method=method)
            if method == "GET" and (rule.endpoint.startswith("pages.") or rule.endpoint == "account.keys_page"):
                assert response.status_code == 302 and "/login?next=" in response.headers["Location"], path
            else:
                assert response.status_code == 401, (method, path)
                body = response.json  # on /v1 in OpenAI's shape, {"error": {"message", "type", "param", "code"}}
                assert (body["error"]["code"] if path.startswith("/v1/") else body["code"]) == "unauthorized"
                assert response.headers["WWW-Authenticate"] == 'Bearer realm="image-assistant"'
            checked += 1
    assert checked > 15
    assert client.get("/healthz").status_code in (200, 503)
    assert client.get("/login").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_a_wrong_password_and_an_unknown_name_get_the_same_answer(auth_app):
    client = auth_app.test_client()
    wrong = client.post("/login", json={"username": "ada", "password": PASSWORD + "x"})
    unknown = client.post("/login", json={"username": "nobody", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json == unknown.json and wrong.json["code"] == "invalid_credentials"
    form = client.post("/login", data={"username": "nobody", "password": PASSWORD, "csrf_token": form_token(client)})
    assert form.status_code == 401 and b"the name or the password is wrong" in form.data


def test_sign_out_ends_the_session_on_the_server(auth_app):
    client = signed_in(auth_app, "ada")
    saved = client.get_cookie("session").value
    assert client.get("/history").status_code == 200
    assert client.post("/logout").status_code == 204
    assert client.get("/history").status_code == 401
    replay = auth_app.test_client()
    replay.set_cookie("session", saved)  # a copy of the cookie from before the sign-out
    assert replay.get("/history").status_code == 401


def test_a_sign_in_starts_a_new_session(auth_app):
    client = auth_app.test_client()
    client.get("/login")
    before = client.get_cookie("session")
    signed = client.post("/login", json={"username": "ada", "password": PASSWORD})
    assert signed.status_code == 200
    assert before is None or client.get_cookie("session").value != before.value


def test_a_form_sign_in_goes_back_to_the_page_asked_for_and_only_on_this_site(auth_app):
    client = auth_app.test_client()
    back = client.post("/login", data={"username": "ada", "password": PASSWORD, "next": "/page/images/x",
                                       "csrf_token": form_token(client)})
    assert back.status_code == 302 and back.headers["Location"] == "/page/images/x"
    for elsewhere in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        other = auth_app.test_client()
        away = other.post("/login", data={"username": "ada", "password": PASSWORD, "next": elsewhere,
                                          "csrf_token": form_token(other)})
        assert away.headers["Location"] == "/"


def test_a_form_sign_in_without_the_pages_token_is_refused(auth_app):
    client = auth_app.test_client()
    refused = client.post("/login", data={"username": "ada", "password": PASSWORD})
    assert refused.status_code == 400 and b"the form has expired" in refused.data
    assert client.get("/history").status_code == 401


def test_an_api_key_works_without_a_cookie_until_it_is_revoked(auth_app):
    made = signed_in(auth_app, "grace").post("/keys", json={"label": "curl"})
    assert made.status_code == 201 and set(made.json) == {"key_id", "key", "label", "created_at"}
    key = made.json["key"]
    script = auth_app.test_client(use_cookies=False)
    assert script.get("/history", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert script.get("/history", headers={"X-API-Key": key}).status_code == 200
    listed = script.get("/keys", headers={"X-API-Key": key}).json["keys"]
    assert [k["label"] for k in listed] == ["curl"] and key not in str(listed)
    assert script.delete(f"/keys/{made.json['key_id']}", headers={"X-API-Key": key}).status_code == 204
    refused = script.get("/history", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 401 and refused.json["code"] == "unauthorized"


def test_an_account_revokes_only_its_own_keys(auth_app):
    made = signed_in(auth_app, "grace").post("/keys", json={"label": "mine"}).json
    other = signed_in(auth_app, "ada").delete(f"/keys/{made['key_id']}")
    assert other.status_code == 404 and other.json["code"] == "key_not_found"


def test_each_account_has_its_own_history_from_any_client(auth_app):
    ada = signed_in(auth_app, "ada")
    uploaded = ada.post("/upload", data={"image": (io.BytesIO(image_bytes()), "a.png")})
    assert uploaded.status_code == 201
    key = ada.post("/keys", json={}).json["key"]
    by_key = auth_app.test_client(use_cookies=False).get("/history", headers={"Authorization": f"Bearer {key}"})
    assert [image["image_id"] for image in by_key.json["images"]] == [uploaded.json["image_id"]]
    assert signed_in(auth_app, "grace").get("/history").json["images"] == []


def test_auth_off_keeps_the_cookie_sessions_and_has_no_sign_in(make_app):
    app = make_app(AUTH="off")
    client = app.test_client()
    assert client.get("/history").status_code == 200
    assert client.post("/login", json={"username": "ada", "password": PASSWORD}).status_code == 404


def test_an_account_reaches_only_what_it_made_and_an_admin_reads_everything(auth_app):
    grace, ada = signed_in(auth_app, "grace"), signed_in(auth_app, "ada")
    image = grace.post("/upload", data={"image": (io.BytesIO(image_bytes()), "g.png")}).json
    file_url, image_id = image["image_url"], image["image_id"]
    other = auth_app.extensions["accounts"].create_user("linus", PASSWORD)
    linus = signed_in(auth_app, "linus")
    for response in (linus.get(f"/images/{image_id}"), linus.get(file_url), linus.delete(f"/images/{image_id}"),
                     linus.post("/question", json={"image_id": image_id, "question": "what is it?"})):
        assert response.status_code == 404, response.json  # as for an id that does not exist
    missing = linus.get("/images/00000000-0000-0000-0000-000000000000").json
    assert linus.get(f"/images/{image_id}").json["error"] == missing["error"].replace(
        "00000000-0000-0000-0000-000000000000", image_id)
    assert linus.get(f"/page/images/{image_id}").status_code == 404
    assert ada.get(f"/images/{image_id}").status_code == 200 and ada.get(file_url).status_code == 200
    assert grace.get(file_url).status_code == 200
    assert grace.post("/question", json={"image_id": image_id, "question": "what is it?"}).status_code == 200
    assert grace.delete(f"/images/{image_id}").status_code == 204
    assert other["role"] == "user"


def test_healthz_tells_anyone_its_status_and_an_admin_the_details(auth_app):
    anonymous = auth_app.test_client().get("/healthz").json
    assert set(anonymous) == {"status"}
    assert set(signed_in(auth_app, "grace").get("/healthz").json) == {"status"}
    assert {"models", "queue", "keys"} <= set(signed_in(auth_app, "ada").get("/healthz").json)


def test_rate_limit_counts_each_accounts_requests(make_app):
    app = make_app(AUTH="on", RATE_LIMIT="3/minute")
    identity = app.extensions["accounts"]
    keys = {}
    for name in ("ada", "grace"):
        user = identity.create_user(name, PASSWORD)
        keys[name] = identity.create_key(user["user_id"])[1]
    client = app.test_client(use_cookies=False)
    answers = [client.get("/history", headers={"X-API-Key": keys["ada"]}) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert answers[-1].json["code"] == "rate_limited" and 0 < int(answers[-1].headers["Retry-After"]) <= 61
    assert client.get("/keys", headers={"X-API-Key": keys["ada"]}).status_code == 429  # one count for every route
    assert "Retry-After" not in answers[0].headers  # only on the refusal
    assert client.get("/history", headers={"X-API-Key": keys["grace"]}).status_code == 200  # another account


def test_guesses_sent_at_the_same_time_are_counted_as_they_come(auth_app):
    from concurrent.futures import ThreadPoolExecutor

    def guess(number):
        return auth_app.test_client().post("/login", json={"username": "grace",
                                                           "password": f"guess number {number:04}"}).status_code

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(guess, range(24)))
    assert answers.count(401) == 5 and answers.count(429) == 19  # five passwords checked, no more


def test_failed_sign_ins_are_throttled_per_name_and_per_address_alike(auth_app):
    client = auth_app.test_client()
    for _ in range(5):
        assert client.post("/login", json={"username": "ada", "password": "wrong password!"}).status_code == 401
    locked = client.post("/login", json={"username": "ada", "password": PASSWORD})  # even the right one, for now
    assert locked.status_code == 429 and locked.json["code"] == "rate_limited"
    assert 0 < int(locked.headers["Retry-After"]) <= 900
    unknown = client.post("/login", json={"username": "nobody", "password": "wrong password!"})
    assert unknown.status_code == 429 and unknown.json["error"] == locked.json["error"]  # the address is spent too


def test_a_bad_rate_limit_stops_the_start():
    from errors import SettingError

    with pytest.raises(SettingError, match="RATE_LIMIT='lots': use a rate such as 120/minute"):
        settings.from_environment({"RATE_LIMIT": "lots"})


def test_the_page_shows_who_is_signed_in_and_makes_and_revokes_keys(auth_app):
    client = signed_in(auth_app, "grace")
    page = client.get("/").get_data(as_text=True)
    assert "Signed in as <strong>grace</strong>" in page and "Sign out" in page
    keys_page = client.get("/page/keys").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', keys_page).group(1)
    made = client.post("/page/keys", data={"label": "laptop", "csrf_token": token})
    key = re.search(r'class="new-key">([^<]+)<', made.get_data(as_text=True)).group(1)
    assert made.status_code == 201 and key.startswith("ia_")
    assert key not in client.get("/page/keys").get_data(as_text=True)  # shown once
    [listed] = client.get("/keys").json["keys"]
    assert client.post(f"/page/keys/{listed['key_id']}/revoke", data={"csrf_token": token}).status_code == 302
    assert client.get("/keys").json["keys"] == []
    assert client.post("/page/keys", data={"label": "no token"}).status_code == 400


def test_with_no_account_yet_the_start_and_the_sign_in_page_say_how_to_make_one(make_app, caplog):
    with caplog.at_level(logging.WARNING, logger="app"):
        app = make_app(AUTH="on")
    assert any("no account yet" in record.getMessage() for record in caplog.records)
    assert "flask --app app users create NAME --admin" in app.test_client().get("/login").get_data(as_text=True)


def test_a_password_with_spaces_at_its_ends_signs_in(make_app):
    app = make_app(AUTH="on")
    app.extensions["accounts"].create_user("ada", "  spaced password  ")
    client = app.test_client()
    assert client.post("/login", json={"username": "ada", "password": "  spaced password  "}).status_code == 200
    assert client.post("/login", json={"username": "ada", "password": "spaced password"}).status_code == 401


def test_session_cookie_secure_marks_the_cookie(make_app):
    app = make_app(AUTH="on", **settings.from_environment({"SESSION_COOKIE_SECURE": "1"}))
    app.extensions["accounts"].create_user("ada", PASSWORD)
    response = app.test_client().post("/login", json={"username": "ada", "password": PASSWORD},
                                      base_url="https://localhost")
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_behind_trusted_proxies_each_client_is_counted_by_its_own_address(make_app):
    for proxies, apart in ((1, True), (0, False)):
        app = make_app(AUTH="on", TRUSTED_PROXIES=proxies)
        app.extensions["accounts"].create_user(f"ada{proxies}", PASSWORD)
        client = app.test_client()
        for number in range(5):
            client.post("/login", json={"username": f"name{number}", "password": "wrong password!"},
                        headers={"X-Forwarded-For": "203.0.113.7"})
        other = client.post("/login", json={"username": f"ada{proxies}", "password": PASSWORD},
                            headers={"X-Forwarded-For": "198.51.100.9"})
        # Behind a proxy, another client is not locked out; without one, a forged header changes nothing.
        assert other.status_code == (200 if apart else 429)
