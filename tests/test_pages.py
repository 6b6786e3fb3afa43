"""The page's server side: CSRF, the Origin check, the security headers and the plain form posts."""

import io
import re

import pytest

from conftest import FakeCaptioner, image_bytes, stored_files


def token(client) -> str:
    page = client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def test_the_page_has_a_strict_content_security_policy(make_app):
    response = make_app().test_client().get("/")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "img-src 'self' data:" in policy
    assert "unsafe-inline" not in policy
    page = response.get_data(as_text=True)
    assert "<script>" not in page and "style=" not in page and " on" + "click" not in page


def test_form_upload_redirects_to_the_image_page(make_app):
    client = make_app().test_client()
    response = client.post("/page/upload", data={"csrf_token": token(client),
                                                 "image": (io.BytesIO(image_bytes()), "a.png")})
    assert response.status_code == 303
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "a fake caption" in page
    asked = client.post("/page/question", data={"csrf_token": token(client), "question": "why <b>?",
                                                "image_id": response.headers["Location"].rsplit("/", 1)[1]})
    assert asked.status_code == 303
    page = client.get(asked.headers["Location"]).get_data(as_text=True)
    assert "why &lt;b&gt;?" in page and "a fake answer" in page


@pytest.mark.parametrize("path", ["/page/upload", "/page/question", "/page/generate"])
def test_form_posts_without_the_token_are_refused(make_app, data_dir, path):
    captioner = FakeCaptioner()
    client = make_app(captioner=captioner).test_client()
    token(client)
    response = client.post(path, data={"csrf_token": "forged", "image": (io.BytesIO(image_bytes()), "a.png"),
                                       "question": "q", "image_id": "x", "description": "d"})
    assert response.status_code == 400
    assert "did not come from this site" in response.get_data(as_text=True)
    assert response.mimetype == "text/html"
    assert captioner.calls == [] and stored_files(data_dir) == []


def test_form_errors_render_a_page_with_the_message(make_app, data_dir):
    client = make_app().test_client()
    response = client.post("/page/upload", data={"csrf_token": token(client),
                                                 "image": (io.BytesIO(b"not an image"), "a.png")})
    assert response.status_code == 400 and response.mimetype == "text/html"
    assert "not a PNG or JPEG image" in response.get_data(as_text=True)
    assert stored_files(data_dir) == []


@pytest.mark.parametrize("path", ["/upload", "/question", "/generate", "/page/upload"])
def test_cross_site_posts_are_refused(make_app, data_dir, path):
    captioner = FakeCaptioner()
    client = make_app(captioner=captioner).test_client()
    response = client.post(path, headers={"Origin": "https://evil.example"},
                           data={"image": (io.BytesIO(image_bytes()), "a.png")})
    assert response.status_code == 403 and response.get_json()["code"] == "cross_origin"
    assert captioner.calls == [] and stored_files(data_dir) == []


def test_same_origin_and_originless_posts_pass(make_app):
    client = make_app().test_client()
    same = client.post("/upload", headers={"Origin": "http://localhost"},
                       data={"image": (io.BytesIO(image_bytes()), "a.png")})
    plain = client.post("/upload", data={"image": (io.BytesIO(image_bytes()), "a.png")})
    assert same.status_code == 201 and plain.status_code == 201


def test_unknown_image_page_is_a_404_page(make_app):
    response = make_app().test_client().get("/page/images/nope")
    assert response.status_code == 404 and "no image with id" in response.get_data(as_text=True)


def test_the_gallery_escapes_captions(make_app):
    class MarkupCaptioner(FakeCaptioner):
        def caption_batch(self, images, prompt=None):
            return ["<script>alert(1)</script>"] * len(images)

    client = make_app(captioner=MarkupCaptioner()).test_client()
    client.post("/upload", data={"image": (io.BytesIO(image_bytes()), "<b>name</b>.png")})
    page = client.get("/").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_missing_model_is_told_at_the_top_and_what_needs_it_is_off(make_app):
    from models import UnavailableModel

    app = make_app(captioner=UnavailableModel("Salesforce/blip-image-captioning-base",
                                              "CAPTION_MODEL: run `hf download Salesforce/blip-image-captioning-base`"))
    page = app.test_client().get("/").get_data(as_text=True)
    assert "Captioning is off: CAPTION_MODEL: run `hf download Salesforce/blip-image-captioning-base`" in page
    assert "make demo" in page and "Questions are off" not in page
    assert re.search(r'<button type="submit" disabled>Upload and caption</button>', page)
    assert re.search(r'<button type="submit">Ask</button>', page)


def test_no_notice_when_the_models_are_loaded(make_app):
    # A drawing model with every setting: nothing on the page is disabled.
    page = make_app(SD_MODEL="someone/another-model").test_client().get("/").get_data(as_text=True)
    assert 'class="notice"' not in page and "disabled" not in page


def test_the_generate_form_offers_only_what_the_model_takes(make_app):
    # FLUX.1-schnell, the default: 1 to 4 steps, no guidance; the provider's default steps when left blank.
    page = make_app().test_client().get("/").get_data(as_text=True)
    steps = re.search(r'<input id="steps-input"[^>]*>', page).group(0)
    assert 'min="1" max="4"' in steps and "value=" not in steps
    for field in ("negative-input", "guidance-input"):
        assert "disabled" in re.search(rf'<input id="{field}"[^>]*>', page).group(0)
    assert "black-forest-labs/FLUX.1-schnell has no guidance" in page
    # A model the app knows nothing of: every setting, 1 to 100 steps.
    page = make_app(SD_MODEL="someone/another-model").test_client().get("/").get_data(as_text=True)
    assert 'min="1" max="100"' in re.search(r'<input id="steps-input"[^>]*>', page).group(0)
    assert "disabled" not in re.search(r'<input id="guidance-input"[^>]*>', page).group(0)
    assert "has no guidance" not in page
