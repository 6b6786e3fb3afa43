"""Deleting: an image, a generation, a whole history; only by the session that made them; files gone from disk."""

import io

import pytest

from conftest import FakeAnswerer, FakeCaptioner, image_bytes, stored_files
from hf_client import HFClient


@pytest.fixture
def app(make_app, fake_api):
    app = make_app(captioner=FakeCaptioner(), answerer=FakeAnswerer())
    app.extensions["hf_client"] = HFClient(["hf_deleteAAAAAAAAA1111"], "test/delete", provider="hf-inference",
                                           router_url=fake_api.url, timeout=5)
    return app


def upload(client):
    response = client.post("/upload", data={"image": (io.BytesIO(image_bytes()), "a.png")})
    assert response.status_code == 201
    return response.get_json()


def test_the_owner_deletes_an_image_with_its_threads_file_and_cached_context(app, data_dir):
    owner, visitor = app.test_client(), app.test_client()
    image = upload(owner)
    assert visitor.post("/question", json={"image_id": image["image_id"], "question": "q?"}).status_code == 200
    assert app.extensions["models"].cache.get(image["image_id"]) is not None
    assert owner.delete(f"/images/{image['image_id']}").status_code == 204
    assert owner.get(f"/images/{image['image_id']}").get_json()["code"] == "image_not_found"
    assert visitor.post("/question", json={"image_id": image["image_id"], "question": "q?"}).status_code == 404
    assert owner.get("/history").get_json()["total_images"] == 0
    assert app.extensions["models"].cache.get(image["image_id"]) is None
    assert stored_files(data_dir / "uploads") == []


def test_another_session_cannot_delete(app, data_dir):
    owner, visitor = app.test_client(), app.test_client()
    image = upload(owner)
    refused = visitor.delete(f"/images/{image['image_id']}")
    assert refused.status_code == 403 and refused.get_json()["code"] == "not_owner"
    assert visitor.delete("/history").status_code == 204  # clears the visitor's own, which is nothing
    assert owner.get(f"/images/{image['image_id']}").status_code == 200
    assert len(stored_files(data_dir / "uploads")) == 1


def test_a_generation_is_deleted_with_its_file(app, data_dir):
    client = app.test_client()
    made = client.post("/generate", json={"description": "a fox"}).get_json()
    assert len(stored_files(data_dir / "uploads" / "generated")) == 1
    assert client.delete(f"/generations/{made['generation_id']}").status_code == 204
    assert client.get(f"/generations/{made['generation_id']}").status_code == 404
    assert stored_files(data_dir / "uploads" / "generated") == []


def test_clearing_a_history_takes_only_the_sessions_own(app, data_dir):
    mine, theirs = app.test_client(), app.test_client()
    for _ in range(2):
        upload(mine)
    mine.post("/generate", json={"description": "a fox"})
    kept = upload(theirs)
    assert mine.delete("/history").status_code == 204
    listed = mine.get("/history").get_json()
    assert listed["total_images"] == 0 and listed["total_generations"] == 0
    assert theirs.get("/history").get_json()["images"][0]["image_id"] == kept["image_id"]
    assert stored_files(data_dir / "uploads") == [kept["image_url"].rsplit("/", 1)[1]]


@pytest.mark.parametrize("path", ["/images/nope", "/generations/nope"])
def test_deleting_what_is_not_there(app, path):
    response = app.test_client().delete(path)
    assert response.status_code == 404 and response.get_json()["code"].endswith("_not_found")


def test_a_delete_from_another_site_is_refused(app, data_dir):
    client = app.test_client()
    image = upload(client)
    refused = client.delete(f"/images/{image['image_id']}", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and refused.get_json()["code"] == "cross_origin"
    assert client.delete("/history", headers={"Origin": "https://evil.example"}).status_code == 403
    assert len(stored_files(data_dir / "uploads")) == 1
