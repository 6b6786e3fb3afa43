"""Accounts in a real browser: `python app.py` with AUTH=on as a process on 127.0.0.1 (the tiny BLIP models), an
account made with the real `flask --app app users create`, and Debian's Chromium driven by Playwright.

The browser, the page sizes, the accessibility and tap-target checks and the upload helper are test_browser.py's.
"""

import os
import re
import subprocess

import pytest
import requests

import servers
from conftest import image_bytes
from test_server import data_env

# Imported for their fixtures and helpers; test_browser skips this module too where Chromium is missing.
from test_browser import (  # noqa: F401  (browser, page and audited are fixtures)
    SIZES, audited, axe_violations, browser, files, is_phone, page, shot, small_tap_targets, upload_through_page)
from playwright.sync_api import expect

NAME = "ada"
PASSWORD = "correct horse battery staple"
FLASK = os.path.join(os.path.dirname(servers.PYTHON), "flask")
TIMEOUT = 30  # seconds, for each request made outside the browser


@pytest.fixture(scope="module")
def auth_server(tiny_blip, tmp_path_factory):
    """`python app.py` with AUTH=on, started with no account; then the first account, made with the real CLI
    in the server's environment (the JSON history, shared by both processes). Its base URL."""
    folder = tmp_path_factory.mktemp("auth-server")
    port = servers.free_port()
    # RATE_LIMIT above the default 120/minute: every test here signs in as the one account within a minute or so.
    env = {**data_env(folder, port), "AUTH": "on", "CAPTION_MODEL": tiny_blip["caption"],
           "VQA_MODEL": tiny_blip["vqa"], "RATE_LIMIT": "1000/minute"}
    log_path = str(folder / "server.log")
    process = servers.start([servers.PYTHON, "app.py"], env, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        servers.wait_until_up(base + "/healthz", process)
        made = subprocess.run([FLASK, "--app", "app", "users", "create", NAME], input=PASSWORD + "\n",
                              cwd=servers.ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                              capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        assert f"created the user account '{NAME}'" in made.stdout
        yield base
    finally:
        servers.stop(process)


def sign_in(page, base):
    """Open / and sign in with the form it is sent to; the page is then the assistant's."""
    page.goto(base + "/")
    expect(page).to_have_url(re.compile(re.escape(base) + r"/login\?next=(/|%2F)$"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.fill("#username", NAME)
    page.fill("#password", PASSWORD)
    page.click("form button[type=submit]")
    expect(page).to_have_url(base + "/")


def session_cookie(page) -> dict:
    """The browser's cookies for the app, as requests takes them."""
    return {cookie["name"]: cookie["value"] for cookie in page.context.cookies()}


def test_sign_in_upload_and_read_the_history_with_a_key_made_on_the_page(page, auth_server, tmp_path):
    base = auth_server
    sign_in(page, base)
    account = page.locator("nav.account")
    expect(account).to_contain_text(f"Signed in as {NAME}")
    shot(page, f"accounts-01-signed-in-{'phone' if is_phone(page) else 'desktop'}")

    photo = files(tmp_path / "photo.png", image_bytes(size=(120, 90), color=(30, 120, 200)))
    answer = upload_through_page(page, photo)
    assert answer.status == 201
    image_id = answer.json()["image_id"]
    expect(page.locator("#current-caption")).to_have_text(answer.json()["caption"])

    account.get_by_role("link", name="API keys").click()
    expect(page).to_have_url(base + "/page/keys")
    expect(page.locator("nav.account")).to_contain_text(f"Signed in as {NAME}")
    page.fill("#label", "browser test")
    page.get_by_role("button", name="Make a key").click()
    key = page.locator(".new-key").inner_text().strip()
    assert key.startswith("ia_")
    listed_key = page.locator("ul.keys li").filter(has_text=key[:9] + "…")  # the list shows its first characters
    expect(listed_key).to_contain_text("browser test")
    assert key not in page.locator("ul.keys").inner_text()
    shot(page, f"accounts-02-new-key-{'phone' if is_phone(page) else 'desktop'}")

    # Outside the browser: the key alone reads the account's history, with the image uploaded on the page.
    listed = requests.get(base + "/history", headers={"Authorization": "Bearer " + key}, timeout=TIMEOUT)
    assert listed.status_code == 200, listed.text
    assert image_id in [image["image_id"] for image in listed.json()["images"]]

    # Sign out: back to the sign-in page, and the session's cookie, kept aside, no longer reaches the history.
    before = session_cookie(page)
    assert requests.get(base + "/history", cookies=before, timeout=TIMEOUT).status_code == 200
    page.locator("nav.account").get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(base + "/login")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("nav.account")).to_have_count(0)
    refused = requests.get(base + "/history", cookies=before, timeout=TIMEOUT)
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
    page.goto(base + "/")
    expect(page).to_have_url(re.compile(re.escape(base) + r"/login\?next=(/|%2F)$"))
    assert page.problems == []


def visit_the_account_pages(page, base, check) -> None:
    """The sign-in page (as first opened, and refusing a wrong password), the assistant signed in, and the API keys
    page (before and after a key is made); check(state) at each."""
    page.goto(base + "/login")
    check("sign-in")
    page.fill("#username", NAME)
    page.fill("#password", PASSWORD + " wrong")  # one failed sign-in per visit: 5 in 15 minutes are allowed
    page.click("form button[type=submit]")
    expect(page.locator(".error[role=alert]")).to_be_visible()
    check("sign-in refused")
    sign_in(page, base)
    check("assistant, signed in")
    page.goto(base + "/page/keys")
    check("API keys")
    page.fill("#label", "audited")
    page.get_by_role("button", name="Make a key").click()
    expect(page.locator(".new-key")).to_be_visible()
    check("API keys, a new key shown")


def test_the_account_pages_pass_axe(audited, auth_server):
    """axe-core, at a desktop's and a phone's size, on every state of the account pages."""
    found = {}
    visit_the_account_pages(audited, auth_server, lambda state: found.update({state: axe_violations(audited)}))
    shot(audited, f"accounts-03-audited-keys-{audited.size_name}")
    assert {state: violations for state, violations in found.items() if violations} == {}


@pytest.fixture
def phone(browser):
    """A page at test_browser.py's phone size (touch)."""
    context = browser.new_context(**SIZES["phone"])
    yield context.new_page()
    context.close()


def test_the_account_pages_have_44px_tap_targets_on_a_phone(phone, auth_server):
    """test_browser.py's tap-target check (every control a finger uses at least 44x44 px) on the account pages."""
    small = {}
    visit_the_account_pages(phone, auth_server, lambda state: small.update({state: small_tap_targets(phone)}))
    assert {state: controls for state, controls in small.items() if controls} == {}
