"""Generation through today's inference providers, against the tests' hub and router replaying recorded answers."""

import io
import json
import logging
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

import servers
import settings
from conftest import stored_files
from errors import InvalidInput, KeysUnavailable, ModelNotServed, UpstreamError
from fake_hf import chance_proof, fragments_in, mapping
from hf_client import SUGGESTED_MODEL, HFClient
from test_server import data_env

KEYS = chance_proof("hf_provKnotsJumpyWrongLimp", "hf_provGustyTulipsRoomMonk", "hf_provStormyNightsWolvPox")
A, B, C = KEYS


def make_client(api, clock, model, provider="auto", keys=KEYS, **options):
    return HFClient(keys, model, provider=provider, router_url=api.url, clock=clock, sleep=clock.sleep, timeout=5,
                    **options)


def hub_asked_about(api, model) -> list[str]:
    """The hub's requests for one model (an app built in another test may still ask about its own)."""
    return [path for path in api.hub_requests if urlsplit(path).path == f"/api/models/{model}"]


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
    assert "test/unserved" in refused.value.message and SUGGESTED_MODEL in refused.value.message
    assert fake_api.requests == []


def test_the_default_model_is_the_one_suggested_and_never_suggests_itself(fake_api, clock):
    assert settings.DEFAULTS["SD_MODEL"] == SUGGESTED_MODEL == "black-forest-labs/FLUX.1-schnell"
    fake_api.models[SUGGESTED_MODEL] = {"pipeline_tag": "text-to-image", "mapping": {}}
    with pytest.raises(ModelNotServed) as refused:
        make_client(fake_api, clock, SUGGESTED_MODEL).generate("a fox", {})
    assert refused.value.message.count(SUGGESTED_MODEL) == 1 and "choose another SD_MODEL" in refused.value.message


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
    assert "[hidden]" in text and fragments_in(text, KEYS) == []


# A model withdrawn: a provider's 410 Gone.

def test_a_provider_that_withdrew_the_model_names_those_that_still_serve_it(fake_api, clock):
    fake_api.models["test/withdrawn"] = {"pipeline_tag": "text-to-image", "mapping": mapping("fal-ai", "together")}
    fake_api.script = {key: ["410"] for key in KEYS}
    client = make_client(fake_api, clock, "test/withdrawn")
    with pytest.raises(ModelNotServed) as refused:
        client.generate("a fox", {})
    assert refused.value.status == 503 and refused.value.code == "model_not_served"
    assert refused.value.message == (
        "SD_MODEL 'test/withdrawn' is no longer served by the provider fal-ai (410 Gone: The requested API is no "
        "longer supported) for text-to-image: set HF_PROVIDER to one that serves it (together)")
    assert fake_api.keys_used() == [A] and clock.sleeps == []  # not retried, on no other key
    assert [k["state"] for k in client.key_status()] == ["active"] * 3


def test_a_model_withdrawn_from_its_only_provider_suggests_a_model(fake_api, clock):
    fake_api.models["test/gone"] = {"pipeline_tag": "text-to-image", "mapping": mapping("hf-inference")}
    fake_api.script = {A: ["410"]}
    with pytest.raises(ModelNotServed) as refused:
        make_client(fake_api, clock, "test/gone", provider="hf-inference").generate("a fox", {})
    assert "no longer served by the provider hf-inference" in refused.value.message
    assert refused.value.message.endswith(f"choose an SD_MODEL that providers serve, e.g. {SUGGESTED_MODEL}")
    assert len(fake_api.requests) == 1


# What can be checked here is checked before the hub or a provider is asked.

def test_no_key_is_told_at_once_without_asking_the_hub(fake_api, clock):
    fake_api.hub_down = True
    with pytest.raises(KeysUnavailable) as refused:
        make_client(fake_api, clock, "test/no-key", keys=[]).generate("a fox", {})
    assert refused.value.status == 503 and refused.value.code == "no_api_key"
    assert "HF_API_KEYS" in refused.value.message
    assert hub_asked_about(fake_api, "test/no-key") == [] and fake_api.requests == [] and clock.sleeps == []


def test_with_a_key_an_unreachable_hub_is_told_as_the_hubs_fault(fake_api, clock):
    fake_api.hub_down = True
    with pytest.raises(UpstreamError) as failed:
        make_client(fake_api, clock, "test/hub-down").generate("a fox", {})
    assert failed.value.code == "provider_lookup_failed" and "the hub could not be asked" in failed.value.message
    assert len(hub_asked_about(fake_api, "test/hub-down")) == 1 and fake_api.requests == []


@pytest.mark.parametrize("rest, code, headers", [
    (lambda pool, key: pool.cool(key, 90), "all_keys_busy", {"Retry-After": "90"}),
    (lambda pool, key: pool.exhaust(key), "all_keys_busy", {"Retry-After": "3600"}),
    (lambda pool, key: pool.disable(key, "invalid or expired (401)"), "all_keys_disabled", {}),
], ids=["cooling", "exhausted", "disabled"])
def test_every_key_resting_is_told_without_asking_the_hub(fake_api, clock, rest, code, headers):
    client = make_client(fake_api, clock, "test/resting")
    for key in client.pool.keys:
        rest(client.pool, key)
    with pytest.raises(KeysUnavailable) as refused:
        client.generate("a fox", {})
    assert refused.value.code == code and refused.value.headers == headers
    assert hub_asked_about(fake_api, "test/resting") == [] and fake_api.requests == []


# What a known model cannot use: FLUX.1-schnell (1 to 4 steps, no guidance, no negative prompt).

@pytest.mark.parametrize("model", [SUGGESTED_MODEL, "black-forest-labs/flux.1-schnell"], ids=["id", "lower-case"])
@pytest.mark.parametrize("parameters, code", [
    ({"num_inference_steps": 5}, "invalid_num_inference_steps"),
    ({"num_inference_steps": 30}, "invalid_num_inference_steps"),
    ({"guidance_scale": 3.5}, "invalid_guidance_scale"),
    ({"guidance_scale": 0.0}, "invalid_guidance_scale"),
    ({"negative_prompt": "fog"}, "invalid_negative_prompt"),
], ids=["steps-5", "steps-30", "guidance-3.5", "guidance-0", "negative-prompt"])
def test_what_flux_schnell_cannot_use_is_refused_before_any_call(fake_api, clock, model, parameters, code):
    client = make_client(fake_api, clock, model, keys=[])  # no key: the parameters are checked first
    with pytest.raises(InvalidInput) as refused:
        client.generate("a fox", parameters)
    assert refused.value.status == 400 and refused.value.code == code
    name = code.removeprefix("invalid_")
    assert refused.value.message.startswith(f"'{name}' ") and "timestep-distilled" in refused.value.message
    assert client.providers is None and client.lookup_error is None  # the hub was never asked
    assert fake_api.requests == []


def test_flux_schnell_takes_one_to_four_steps_a_size_and_a_seed(fake_api, clock):
    fake_api.models[SUGGESTED_MODEL] = {"pipeline_tag": "text-to-image", "mapping": mapping("together")}
    client = make_client(fake_api, clock, SUGGESTED_MODEL)
    for steps in (1, 4):
        client.generate("a fox", {"width": 768, "height": 512, "num_inference_steps": steps, "seed": 3})
    assert [request["body"]["steps"] for request in fake_api.requests] == [1, 4]
    assert fake_api.requests[0]["body"] == {"prompt": "a fox", "response_format": "base64", "width": 768,
                                            "height": 512, "steps": 1, "seed": 3, "model": SUGGESTED_MODEL}


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
        # The app's own client, replaced here, asks the hub about its SD_MODEL in the background: not this one.
        app = make_app(**{"SD_MODEL": "test/replaced", **config})
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


def test_flux_schnell_with_too_many_steps_is_a_400_and_nothing_is_kept(generating_app, fake_api, data_dir):
    app = generating_app(SUGGESTED_MODEL)
    response = app.test_client().post(
        "/generate", json={"description": "a fox", "num_inference_steps": 30, "num_images": 2})
    assert response.status_code == 400 and response.get_json()["code"] == "invalid_num_inference_steps"
    assert "takes 1 to 4" in response.get_json()["error"]
    assert app.extensions["hf_client"].providers is None and fake_api.requests == [] and stored_files(data_dir) == []


def test_a_withdrawn_model_is_a_503_and_nothing_is_kept(generating_app, fake_api, data_dir):
    fake_api.models["test/withdrawn-app"] = {"pipeline_tag": "text-to-image", "mapping": mapping("fal-ai")}
    fake_api.script = {key: ["410"] for key in KEYS}
    response = generating_app("test/withdrawn-app").test_client().post("/generate", json={"description": "a fox"})
    assert response.status_code == 503 and response.get_json()["code"] == "model_not_served"
    assert SUGGESTED_MODEL in response.get_json()["error"] and stored_files(data_dir) == []


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
