import base64
import logging
import os

import pytest

from conftest import stored_files
from fake_hf import chance_proof, fragments_in, png
from hf_client import HFClient
from keys import fingerprint

KEYS = chance_proof("hf_genHollyMistsJogRoyal", "hf_genSwirlyKnobsPumpInk")


def same_pixels(first: bytes, second: bytes) -> bool:
    from io import BytesIO

    from PIL import Image

    return Image.open(BytesIO(first)).tobytes() == Image.open(BytesIO(second)).tobytes()


@pytest.fixture
def api(fake_api):
    return fake_api


@pytest.fixture
def generating_app(make_app, api, clock):
    def make(keys=KEYS, model="stabilityai/sdxl", provider="hf-inference", **config):
        client = HFClient(keys, model, provider=provider, router_url=api.url, clock=clock, sleep=clock.sleep,
                          timeout=0.5)
        app = make_app(**config)
        app.extensions["hf_client"] = client
        return app

    return make


def test_generate_saves_the_image_and_its_record(generating_app, api, data_dir):
    app = generating_app()
    client = app.test_client()
    response = client.post("/generate", json={"description": "  a lighthouse at dusk ", "height": 512,
                                              "width": "768", "num_inference_steps": 25, "guidance_scale": "7.5",
                                              "negative_prompt": "fog", "seed": 7})
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) >= {"generation_id", "image", "mime_type", "path", "image_url", "created_at"}
    image = base64.b64decode(body["image"])
    assert same_pixels(image, png()) and body["mime_type"] == "image/png" and body["provider"] == "hf-inference"
    assert body["path"] == os.path.join("generated", f"{body['generation_id']}.png")
    assert str(data_dir) not in response.get_data(as_text=True)
    assert (data_dir / "uploads" / "generated" / f"{body['generation_id']}.png").read_bytes() == image
    assert api.requests[0]["body"] == {"inputs": "a lighthouse at dusk", "parameters": {
        "height": 512, "width": 768, "num_inference_steps": 25, "guidance_scale": 7.5,
        "negative_prompt": "fog", "seed": 7}}
    served = client.get(body["image_url"])
    assert served.status_code == 200 and served.data == image and served.mimetype == "image/png"
    one = client.get(f"/generations/{body['generation_id']}").get_json()
    assert one["description"] == "a lighthouse at dusk" and one["parameters"]["seed"] == 7
    listed = client.get("/history").get_json()
    assert [item["generation_id"] for item in listed["generations"]] == [body["generation_id"]]
    assert listed["total_generations"] == 1
    assert app.test_client().get("/history").get_json()["generations"] == []


def test_generate_with_form_fields_and_defaults(generating_app, api):
    response = generating_app().test_client().post("/generate", data={"description": "a cat", "height": ""})
    assert response.status_code == 201
    assert api.requests[0]["body"] == {"inputs": "a cat", "parameters": {}}


@pytest.mark.parametrize(
    "payload, code",
    [
        ({}, "missing_description"),
        ({"description": "   "}, "missing_description"),
        ({"description": "x" * 1001}, "description_too_long"),
        ({"description": 5}, "invalid_description"),
        ({"description": "a", "height": 250}, "invalid_height"),
        ({"description": "a", "height": 1544}, "invalid_height"),
        ({"description": "a", "height": 513}, "invalid_height"),
        ({"description": "a", "width": "wide"}, "invalid_width"),
        ({"description": "a", "width": 512.5}, "invalid_width"),
        ({"description": "a", "num_inference_steps": 0}, "invalid_num_inference_steps"),
        ({"description": "a", "num_inference_steps": 101}, "invalid_num_inference_steps"),
        ({"description": "a", "num_inference_steps": True}, "invalid_num_inference_steps"),
        ({"description": "a", "guidance_scale": -1}, "invalid_guidance_scale"),
        ({"description": "a", "guidance_scale": "nan"}, "invalid_guidance_scale"),
        ({"description": "a", "guidance_scale": 30.5}, "invalid_guidance_scale"),
        ({"description": "a", "negative_prompt": "n" * 1001}, "negative_prompt_too_long"),
        ({"description": "a", "seed": -1}, "invalid_seed"),
        ({"description": "a", "seed": 2**32}, "invalid_seed"),
    ],
)
def test_generate_validation(generating_app, api, data_dir, payload, code):
    response = generating_app().test_client().post("/generate", json=payload)
    assert response.status_code == 400
    assert response.get_json()["code"] == code
    field = code.removeprefix("missing_").removeprefix("invalid_").removesuffix("_too_long")
    assert f"'{field}'" in response.get_json()["error"]
    assert api.requests == []
    assert stored_files(data_dir) == []


def test_no_key_configured(generating_app, data_dir):
    response = generating_app(keys=[]).test_client().post("/generate", json={"description": "a cat"})
    assert response.status_code == 503
    assert response.get_json() == {
        "error": "no Hugging Face API key configured: set HF_API_KEYS or HF_API_KEYS_FILE", "code": "no_api_key"}
    assert stored_files(data_dir) == []


def test_no_key_is_told_at_once_even_with_the_hub_out_of_reach(generating_app, api, clock, data_dir):
    api.hub_down = True
    app = generating_app(keys=[], model="test/offline-without-keys", provider="auto")
    response = app.test_client().post("/generate", json={"description": "a cat"})
    assert response.status_code == 503 and response.get_json()["code"] == "no_api_key"
    assert "HF_API_KEYS" in response.get_json()["error"]
    assert not any("test/offline-without-keys" in path for path in api.hub_requests)
    assert app.extensions["hf_client"].lookup_error is None and clock.sleeps == []
    assert stored_files(data_dir) == []


def test_every_key_resting_gives_retry_after(generating_app, api, data_dir):
    api.script = {KEYS[0]: [("429", {"Retry-After": "90"})], KEYS[1]: [("429", {"Retry-After": "40"})]}
    response = generating_app().test_client().post("/generate", json={"description": "a cat"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "40"
    assert response.get_json()["code"] == "all_keys_busy" and "40 s" in response.get_json()["error"]
    assert stored_files(data_dir) == []


@pytest.mark.parametrize(
    "behaviour, status, code",
    [("400", 400, "generation_rejected"), ("410", 503, "model_not_served"), ("html", 502, "upstream_error"),
     ("truncated", 502, "upstream_error"), ("500", 502, "upstream_error"), ("hang", 504, "upstream_timeout")],
)
def test_upstream_failures_save_nothing(generating_app, api, data_dir, behaviour, status, code):
    api.script = {key: [behaviour] for key in KEYS}
    response = generating_app().test_client().post("/generate", json={"description": "a cat"})
    assert response.status_code == status and response.get_json()["code"] == code
    assert stored_files(data_dir) == []


def test_keys_appear_nowhere(generating_app, api, data_dir, caplog):
    api.script = {KEYS[0]: ["401"], KEYS[1]: ["echo-key", "echo-key-late", "echo-key-pieces", "ok"]}
    app = generating_app()
    client = app.test_client()
    with caplog.at_level(logging.DEBUG):
        texts = [client.post("/generate", json={"description": "a cat"}).get_data(as_text=True) for _ in range(4)]
        texts.append(client.get("/healthz").get_data(as_text=True))
        texts.append(client.get("/history").get_data(as_text=True))
    texts.append((data_dir / "history.json").read_text())
    texts.append(caplog.text)
    assert "[hidden]" in "".join(texts) and fragments_in("\n".join(texts), KEYS) == []
    keys = client.get("/healthz").get_json()["keys"]
    assert keys == [{"position": 1, "fingerprint": fingerprint(KEYS[0]), "state": "disabled",
                     "reason": "invalid or expired (401)"},
                    {"position": 2, "fingerprint": fingerprint(KEYS[1]), "state": "active"}]


def test_healthz_shows_when_a_cooling_key_returns(generating_app, api, clock):
    api.script = {KEYS[0]: [("429", {"Retry-After": "90"})]}
    client = generating_app().test_client()
    client.post("/generate", json={"description": "a cat"})
    clock.now += 30
    keys = client.get("/healthz").get_json()["keys"]
    assert keys[0] == {"position": 1, "fingerprint": fingerprint(KEYS[0]), "state": "cooling",
                       "reason": "rate limited (429)", "retry_in_seconds": 60}


def test_keys_come_from_the_file_before_the_environment(make_app, tmp_path, api):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# production\nhf_fileWispyOrbitsNymph\n\n")
    app = make_app(HF_API_KEYS="hf_envGlossyTurnipsMoor", HF_API_KEYS_FILE=str(keys_file),
                   HF_ROUTER_URL=api.url, HF_PROVIDER="hf-inference", SD_MODEL="some/model")
    response = app.test_client().post("/generate", json={"description": "a cat"})
    assert response.status_code == 201
    assert api.keys_used() == ["hf_fileWispyOrbitsNymph"]
    assert api.requests[0]["path"] == "/hf-inference/models/some/model"


def test_the_saved_path_is_never_absolute(make_app):
    import actions

    app = make_app()
    with app.app_context():
        assert actions.shown_path("x.png") == os.path.join("generated", "x.png")
    inside = make_app(GENERATED_FOLDER=os.path.join(app.root_path, "uploads", "generated"))
    with inside.app_context():
        assert actions.shown_path("x.png") == os.path.join("uploads", "generated", "x.png")


def test_an_account_past_its_daily_generations_is_refused_before_any_provider_is_called(generating_app, api):
    app = generating_app(AUTH="on", GENERATIONS_PER_DAY=2)
    identity = app.extensions["accounts"]
    for name, role in (("ada", "admin"), ("grace", "user")):
        identity.create_user(name, "correct horse battery staple", role)
    clients = {}
    for name in ("ada", "grace"):
        clients[name] = app.test_client()
        clients[name].post("/login", json={"username": name, "password": "correct horse battery staple"})
    grace = clients["grace"]
    assert grace.post("/generate", json={"description": "a cat", "num_images": 2}).status_code == 201
    calls = len(api.requests)
    refused = grace.post("/generate", json={"description": "a cat"})
    assert refused.status_code == 429 and refused.json["code"] == "quota_exceeded"
    assert "2 of its 2 generations in the last 24 hours" in refused.json["error"]
    assert 86000 < int(refused.headers["Retry-After"]) <= 86400
    too_many = grace.post("/generate", json={"description": "a cat", "num_images": 3})
    assert too_many.status_code == 400 and too_many.json["code"] == "invalid_num_images"
    assert len(api.requests) == calls  # no provider was called
    for _ in range(2):  # admins have no quota
        assert clients["ada"].post("/generate", json={"description": "a cat", "num_images": 2}).status_code == 201
