"""Only this site, only its hosts: over real HTTP on 127.0.0.1."""

import io
import re

import pytest
import requests

from conftest import FakeAnswerer, FakeCaptioner, image_bytes, stored_files
from servers import Serving


@pytest.fixture
def served(make_app):
    captioner, answerer = FakeCaptioner(), FakeAnswerer()
    with Serving(make_app(captioner=captioner, answerer=answerer)) as serving:
        serving.captioner, serving.answerer = captioner, answerer
        yield serving


def files():
    return {"image": ("a.png", io.BytesIO(image_bytes()), "image/png")}


def page_token(session, url) -> str:
    page = session.get(url + "/", timeout=10).text
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "localhost.", "attacker"])
def test_a_rebound_host_name_is_refused(served, data_dir, host):
    name = f"{host}:{served.port}"
    for method, path in [("GET", "/"), ("GET", "/history"), ("POST", "/upload")]:
        response = requests.request(method, served.url + path, headers={"Host": name, "Origin": f"http://{name}"},
                                    files=files() if method == "POST" else None, timeout=10)
        assert response.status_code == 400 and response.json()["code"] == "untrusted_host", (method, path)
        assert "TRUSTED_HOSTS" in response.json()["error"]
    assert served.captioner.calls == [] and stored_files(data_dir) == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "LOCALHOST"])
def test_local_host_names_are_served(served, host):
    name = f"{host}:{served.port}"
    response = requests.post(served.url + "/upload", headers={"Host": name, "Origin": f"http://{name}"},
                             files=files(), timeout=10)
    assert response.status_code == 201


def test_trusted_hosts_replace_the_local_names(make_app):
    client = make_app(TRUSTED_HOSTS="assistant.example, .lan").test_client()
    assert client.get("/healthz", headers={"Host": "assistant.example"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "box.lan:5000"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "localhost"}).get_json()["code"] == "untrusted_host"


def test_an_origin_of_another_port_is_another_site(served):
    response = requests.post(served.url + "/upload", headers={"Origin": "http://127.0.0.1:1"}, files=files(),
                             timeout=10)
    assert response.status_code == 403 and response.json()["code"] == "cross_origin"


@pytest.mark.parametrize("origin", [None, "same"])
def test_a_form_post_from_a_session_without_a_token_is_refused(served, data_dir, origin):
    headers = {"Origin": served.url} if origin else {}
    response = requests.post(served.url + "/page/upload", data={"csrf_token": ""}, files=files(), headers=headers,
                             timeout=10, allow_redirects=False)
    assert response.status_code == 400 and "did not come from this site" in response.text
    assert served.captioner.calls == [] and stored_files(data_dir) == []


def test_a_form_post_carries_its_sessions_token(served, data_dir):
    session = requests.Session()
    token = page_token(session, served.url)
    for wrong in ["", "x", token[:-1]]:
        refused = session.post(served.url + "/page/upload", data={"csrf_token": wrong}, files=files(), timeout=10,
                               allow_redirects=False)
        assert refused.status_code == 400
    other = requests.post(served.url + "/page/upload", data={"csrf_token": token}, files=files(), timeout=10,
                          allow_redirects=False)
    assert other.status_code == 400  # the token is the session's, not a password
    assert stored_files(data_dir) == []
    accepted = session.post(served.url + "/page/upload", data={"csrf_token": token}, files=files(), timeout=10,
                            allow_redirects=False)
    assert accepted.status_code == 303


def test_curl_without_cookie_or_origin_still_works(served):
    response = requests.post(served.url + "/upload", files=files(), timeout=10)
    assert response.status_code == 201


def test_each_session_has_its_own_thread_about_a_shared_image(served):
    owner, visitor = requests.Session(), requests.Session()
    image_id = owner.post(served.url + "/upload", files=files(), timeout=10).json()["image_id"]
    asked = visitor.post(served.url + "/question", json={"image_id": image_id, "question": "visitor's?"}, timeout=10)
    assert asked.status_code == 200
    assert [entry["question"] for entry in asked.json()["history"]] == ["visitor's?"]
    assert owner.get(served.url + f"/images/{image_id}", timeout=10).json()["questions"] == []
    assert "visitor&#39;s?" not in owner.get(served.url + f"/page/images/{image_id}", timeout=10).text
    mine = owner.post(served.url + "/question", json={"image_id": image_id, "question": "owner's?"}, timeout=10)
    assert [entry["question"] for entry in mine.json()["history"]] == ["owner's?"]
    assert [q["question"] for q in visitor.get(served.url + f"/images/{image_id}", timeout=10).json()["questions"]] \
        == ["visitor's?"]
    assert set(mine.json()["history"][0]) == {"question", "answer", "asked_at"}  # no session id shown


def test_stored_files_are_images_and_nothing_else_is_served(served, data_dir):
    body = requests.post(served.url + "/upload", files=files(), timeout=10).json()
    image = requests.get(served.url + body["image_url"], timeout=10)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
    assert image.headers["X-Content-Type-Options"] == "nosniff"
    (data_dir / "uploads" / "page.html").write_text("<script>alert(1)</script>")
    (data_dir / "uploads" / ".incoming-abc").write_bytes(b"half")
    for name in ["page.html", ".incoming-abc", "..%2Fhistory.json", body["image_id"] + ".html"]:
        response = requests.get(served.url + "/uploads/" + name, timeout=10)
        assert response.status_code == 404 and response.headers["Content-Type"] == "application/json", name
