"""Generation through today's inference providers, against the tests' hub and router replaying recorded answers."""

import io
import json
import logging

import pytest
import requests
from PIL import Image

import servers
import settings
from errors import KeysUnavailable, ModelNotServed, UpstreamError
from fake_hf import mapping
from hf_client import HFClient
from test_server import data_env

KEYS = ["hf_provAAAAAAAAAAAA1111", "hf_provBBBBBBBBBBBB2222", "hf_provCCCCCCCCCCCC3333"]
A, B, C = KEYS


def make_client(api, clock, model, provider="auto", keys=KEYS, **options):
    return HFClient(keys, model, provider=provider, router_url=api.url, clock=clock, sleep=clock.sleep, timeout=5,
                    **options)


def pixels(generated) -> tuple:
    return Image.open(io.BytesIO(generated.file.data)).convert("RGB").getpixel((0, 0))


# Each provider's protocol, as its recorded cassette has it: the path, the body, the way the image comes back.
PROTOCOLS = [
    ("hf-inference", "/hf-inference/models/test/proto-hf-inference",
     {"inputs": "a fox", "parameters": {"width": 768, "height": 512, "num_inference_steps": 20, "seed": 3}},
     (128, 0, 128)),
    ("fal-ai", "/fal-ai/fal-ai/flux/dev",
     {"prompt": "a fox", "image_size": {"width": 768, "height": 512}, "num_inference_steps": 20, "seed": 3},
     (0, 128, 128)),
    ("together", "/together/v1/images/generations",
     {"prompt": "a fox", "response_format": "base64", "width": 768, "height": 512, "steps": 20, "seed": 3,
      "model": "black-forest-labs/FLUX.1-schnell"},
     (128, 128, 0)),
    ("replicate", "/replicate/v1/predictions",
     {"input": {"prompt": "a fox", "width": 768, "height": 512, "num_inference_steps": 20, "seed": 3},
      "version": "5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637"},
     (0, 0, 128)),
]


@pytest.mark.parametrize("provider, path, body, colour", PROTOCOLS, ids=[p[0] for p in PROTOCOLS])
def test_each_named_provider_speaks_its_own_protocol(fake_api, clock, provider, path, body, colour):
    model = f"test/proto-{provider}"
    fake_api.models[model] = {"pipeline_tag": "text-to-image", "mapping": mapping(provider)}
    client = make_client(fake_api, clock, model, provider=provider)
    generated = client.generate("a fox", {"width": 768, "height": 512, "num_inference_steps": 20, "seed": 3})
    assert generated.provider == provider
    red, green, blue = pixels(generated)
    assert abs(red - colour[0]) < 8 and abs(green - colour[1]) < 8 and abs(blue - colour[2]) < 8
    (request,) = fake_api.requests
    assert request["path"].split("?")[0] == path
    assert request["body"] == body
    assert request["headers"]["authorization"] == f"Bearer {A}"


def test_auto_takes_the_first_live_provider_the_hub_maps(fake_api, clock):
    fake_api.models["test/auto"] = {"pipeline_tag": "text-to-image", "mapping": {
        **mapping("replicate", status="error"), **mapping("fal-ai", task="image-to-image"), **mapping("together")}}
    client = make_client(fake_api, clock, "test/auto")
    assert client.generate("a fox", {}).provider == "together"
    assert client.status()["providers"] == [
        {"provider": "replicate", "status": "error", "supported": True},
        {"provider": "together", "status": "live", "supported": True}]
    assert [request["path"] for request in fake_api.requests] == ["/together/v1/images/generations"]


def test_a_model_no_provider_serves_is_refused_with_a_suggestion(fake_api, clock, caplog):
    fake_api.models["test/unserved"] = {"pipeline_tag": "text-to-image", "mapping": {}}
    client = make_client(fake_api, clock, "test/unserved")
    with caplog.at_level(logging.WARNING):
        client.discover()
    assert "served by no inference provider" in caplog.text and "test/unserved" in caplog.text
    with pytest.raises(ModelNotServed) as refused:
        client.generate("a fox", {})
    assert refused.value.status == 503 and refused.value.code == "model_not_served"
    assert "test/unserved" in refused.value.message and "stable-diffusion-xl-base-1.0" in refused.value.message
    assert fake_api.requests == []


def test_a_named_provider_that_does_not_serve_the_model_names_those_that_do(fake_api, clock):
    fake_api.models["test/only-together"] = {"pipeline_tag": "text-to-image", "mapping": mapping("together")}
    client = make_client(fake_api, clock, "test/only-together", provider="fal-ai")
    client.discover()
    with pytest.raises(ModelNotServed) as refused:
        client.generate("a fox", {})
    assert "fal-ai" in refused.value.message and "together" in refused.value.message
    assert fake_api.requests == []


def test_a_model_the_hub_does_not_know(fake_api, clock):
    fake_api.models["test/nowhere"] = None
    client = make_client(fake_api, clock, "test/nowhere")
    with pytest.raises(UpstreamError) as failed:
        client.generate("a fox", {})
    assert "no model 'test/nowhere'" in failed.value.message


def test_keys_rotate_across_401_402_and_429_through_a_provider(fake_api, clock):
    fake_api.models["test/rotate"] = {"pipeline_tag": "text-to-image", "mapping": mapping("fal-ai")}
    fake_api.script = {A: ["401"], B: ["402"], C: [("429", {"RateLimit": '"api";r=0;t=45'}), "ok"]}
    client = make_client(fake_api, clock, "test/rotate")
    with pytest.raises(KeysUnavailable) as refused:
        client.generate("a fox", {})
    assert refused.value.code == "all_keys_busy" and refused.value.headers["Retry-After"] == "45"
    assert [(k["state"], k.get("retry_in_seconds")) for k in client.key_status()] == [
        ("disabled", None), ("exhausted", 3600.0), ("cooling", 45.0)]
    clock.now += 45
    assert client.generate("a fox", {}).provider == "fal-ai"
    assert fake_api.keys_used() == [A, B, C, C]


def test_ratelimit_t_counts_only_when_nothing_remains(fake_api, clock):
    fake_api.models["test/remaining"] = {"pipeline_tag": "text-to-image", "mapping": mapping("together")}
    fake_api.script = {A: [("429", {"RateLimit": '"api";r=5;t=45'})]}
    client = make_client(fake_api, clock, "test/remaining")
    client.generate("a fox", {})
    assert client.key_status()[0]["retry_in_seconds"] == 30  # the back-off, not t=45


def test_every_key_bad_through_a_provider(fake_api, clock):
    fake_api.models["test/all-bad"] = {"pipeline_tag": "text-to-image", "mapping": mapping("replicate")}
    fake_api.script = {A: ["401"], B: ["invalid-token"], C: ["403"]}
    with pytest.raises(KeysUnavailable) as refused:
        make_client(fake_api, clock, "test/all-bad").generate("a fox", {})
    assert refused.value.code == "all_keys_disabled"


def test_a_gated_model_is_the_models_problem_not_the_keys(fake_api, clock):
    fake_api.models["test/gated"] = {"pipeline_tag": "text-to-image", "mapping": mapping("fal-ai")}
    fake_api.script = {key: ["gated"] for key in KEYS}
    client = make_client(fake_api, clock, "test/gated")
    with pytest.raises(UpstreamError) as refused:
        client.generate("a fox", {})
    assert refused.value.code == "model_not_permitted" and "gated" in refused.value.message
    assert [k["state"] for k in client.key_status()] == ["active"] * 3 and fake_api.keys_used() == [A]


def test_no_fragment_of_a_key_leaves_through_a_provider(fake_api, clock, caplog):
    fake_api.models["test/echo"] = {"pipeline_tag": "text-to-image", "mapping": mapping("fal-ai")}
    fake_api.script = {A: ["echo-key-late"], B: ["echo-key-pieces"], C: ["echo-key"]}
    client = make_client(fake_api, clock, "test/echo")
    shown = []
    with caplog.at_level(logging.DEBUG):
        for _ in KEYS:
            with pytest.raises(Exception) as failed:
                client.generate("a fox", {})
            shown.append(str(failed.value))
    text = "".join(shown) + caplog.text + json.dumps(client.status()) + json.dumps(client.key_status())
    for key in KEYS:
        assert key[-4:] not in text
        assert not any(key[i : i + 8] in text for i in range(len(key) - 7))


def test_the_png_carries_how_it_was_made(fake_api, clock):
    fake_api.models["test/settings"] = {"pipeline_tag": "text-to-image", "mapping": mapping("fal-ai")}
    client = make_client(fake_api, clock, "test/settings")
    generated = client.generate("a lighthouse at dusk", {"width": 768, "height": 512, "num_inference_steps": 25,
                                                         "guidance_scale": 7.5, "negative_prompt": "fog", "seed": 7})
    text = Image.open(io.BytesIO(generated.file.data)).text
    assert text["parameters"] == ("a lighthouse at dusk\nNegative prompt: fog\nSteps: 25, CFG scale: 7.5, Seed: 7, "
                                  "Size: 768x512, Model: test/settings, Provider: fal-ai")
    assert json.loads(text["generation"]) == {
        "description": "a lighthouse at dusk", "width": 768, "height": 512, "num_inference_steps": 25,
        "guidance_scale": 7.5, "negative_prompt": "fog", "seed": 7, "model": "test/settings", "provider": "fal-ai"}


def test_an_unknown_provider_setting_stops_the_start():
    with pytest.raises(ValueError, match="HF_PROVIDER='openai-images'"):
        HFClient([], "m", provider="openai-images")


def test_the_retired_inference_url_setting_stops_the_start():
    with pytest.raises(ValueError, match="HF_INFERENCE_URL is no longer read"):
        settings.from_environment({"HF_INFERENCE_URL": "https://example.org/models"})


# Through the app.

@pytest.fixture
def generating_app(make_app, fake_api, clock):
    def make(model, **config):
        app = make_app(**config)
        app.extensions["hf_client"] = make_client(fake_api, clock, model)
        return app
    return make


def test_several_images_are_kept_as_generations_of_their_own(generating_app, fake_api, data_dir):
    fake_api.models["test/several"] = {"pipeline_tag": "text-to-image", "mapping": mapping("together")}
    client = generating_app("test/several").test_client()
    response = client.post("/generate", json={"description": "a fox", "num_images": 3, "seed": 10})
    assert response.status_code == 201
    made = response.get_json()["generations"]
    assert len(made) == 3 and len({entry["generation_id"] for entry in made}) == 3
    assert [entry["parameters"]["seed"] for entry in made] == [10, 11, 12]
    assert all(entry["provider"] == "together" and entry["image"] for entry in made)
    assert len(fake_api.requests) == 3
    assert client.get("/history").get_json()["total_generations"] == 3


def test_one_image_answers_as_before(generating_app, fake_api):
    fake_api.models["test/single"] = {"pipeline_tag": "text-to-image", "mapping": mapping("together")}
    body = generating_app("test/single").test_client().post("/generate", json={"description": "a fox"}).get_json()
    assert "generations" not in body and body["provider"] == "together" and body["mime_type"] == "image/png"


def test_when_a_later_image_fails_the_made_ones_are_kept_and_the_failure_told(generating_app, fake_api):
    fake_api.models["test/partial"] = {"pipeline_tag": "text-to-image", "mapping": mapping("together")}
    fake_api.script = {A: ["ok"], B: ["400"]}
    response = generating_app("test/partial").test_client().post(
        "/generate", json={"description": "a fox", "num_images": 3})
    body = response.get_json()
    assert response.status_code == 201 and len(body["generations"]) == 1
    assert body["failed"]["count"] == 2 and body["failed"]["code"] == "generation_rejected"


@pytest.mark.parametrize("value", [0, 5, "two"])
def test_num_images_is_one_to_four(generating_app, fake_api, value):
    fake_api.models["test/count"] = {"pipeline_tag": "text-to-image", "mapping": mapping("together")}
    response = generating_app("test/count").test_client().post(
        "/generate", json={"description": "a fox", "num_images": value})
    assert response.status_code == 400 and response.get_json()["code"] == "invalid_num_images"
    assert fake_api.requests == []


def test_healthz_says_which_providers_serve_the_model(generating_app, fake_api):
    fake_api.models["test/health"] = {"pipeline_tag": "text-to-image", "mapping": mapping("fal-ai", "nscale")}
    app = generating_app("test/health")
    app.extensions["hf_client"].discover()
    generation = app.test_client().get("/healthz").get_json()["generation"]
    assert generation == {"model": "test/health", "provider": "auto", "lookup_error": None, "providers": [
        {"provider": "fal-ai", "status": "live", "supported": True},
        {"provider": "nscale", "status": "live", "supported": True}]}


def test_a_server_with_hf_hub_offline_still_generates(tmp_path, tiny_blip, fake_api):
    """HF_HUB_OFFLINE=1 (which servers.start sets) keeps model loading local; generation goes on."""
    fake_api.models["test/offline"] = {"pipeline_tag": "text-to-image", "mapping": mapping("fal-ai")}
    port = servers.free_port()
    env = {**data_env(tmp_path, port), "CAPTION_MODEL": tiny_blip["caption"], "VQA_MODEL": tiny_blip["vqa"],
           "HF_API_KEYS": A, "SD_MODEL": "test/offline", "HF_ROUTER_URL": fake_api.url,
           "HF_ENDPOINT": fake_api.url, "HF_HUB_OFFLINE": "1"}
    process = servers.start([servers.PYTHON, "app.py"], env, str(tmp_path / "server.log"))
    try:
        base = f"http://127.0.0.1:{port}"
        servers.wait_until_up(base + "/healthz", process)
        response = requests.post(base + "/generate", json={"description": "a fox"}, timeout=60)
        assert response.status_code == 201, response.text
        assert response.json()["provider"] == "fal-ai"
        health = requests.get(base + "/healthz", timeout=10).json()
        assert health["generation"]["providers"] == [{"provider": "fal-ai", "status": "live", "supported": True}]
        log = open(tmp_path / "server.log").read()
        assert "SD_MODEL test/offline is served for text-to-image by fal-ai (live)" in log
    finally:
        servers.stop(process)
