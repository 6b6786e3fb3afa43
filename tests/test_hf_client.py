import io
import logging

import pytest
from PIL import Image

from errors import KeysUnavailable, ModelNotServed, UpstreamError, UpstreamRejected, UpstreamTimeout
from fake_hf import chance_proof, fragments_in
from hf_client import HFClient
from keys import Redactor, fingerprint, read_keys

KEYS = chance_proof("hf_keyJollyOwlsHumSwingSip", "hf_keyPluckyMinxSongsTwirl", "hf_keyQuirkyLoonsRowWispy")
A, B, C = KEYS


@pytest.fixture
def api(fake_api):
    return fake_api


@pytest.fixture
def client(api, clock):
    return HFClient(KEYS, "stabilityai/sdxl", provider="hf-inference", router_url=api.url, clock=clock,
                    sleep=clock.sleep, timeout=0.5, deadline=240)


def states(client):
    return [entry["state"] for entry in client.key_status()]


def colour(generated):
    """The first pixel of a generated image, which the fake colours by how it answered."""
    assert generated.file.mime_type == "image/png" and generated.file.extension == ".png"
    return Image.open(io.BytesIO(generated.file.data)).convert("RGB").getpixel((0, 0))


PURPLE, NAVY, TEAL, OLIVE = (128, 0, 128), (0, 0, 128), (0, 128, 128), (128, 128, 0)


def test_protocol_path_headers_body_and_image(api, client):
    image = client.generate("a red fox", {"height": 512, "width": 768, "num_inference_steps": 20,
                                          "guidance_scale": 7.5, "negative_prompt": "blurry", "seed": 42})
    assert colour(image) == PURPLE and image.provider == "hf-inference"
    (request,) = api.requests
    assert request["path"] == "/hf-inference/models/stabilityai/sdxl"
    assert request["headers"]["authorization"] == f"Bearer {A}"
    assert request["headers"]["accept"] == "image/png"
    assert request["body"] == {"inputs": "a red fox", "parameters": {
        "height": 512, "width": 768, "num_inference_steps": 20, "guidance_scale": 7.5,
        "negative_prompt": "blurry", "seed": 42}}


def test_a_jpeg_answer_is_kept_as_a_png(api, client):
    api.script = {A: ["jpeg"]}
    red, green, blue = colour(client.generate("x", {}))
    assert red > 200 and 120 < green < 200 and blue < 60  # orange


def test_round_robin_over_the_keys(api, client):
    for _ in range(4):
        client.generate("x", {})
    assert api.keys_used() == [A, B, C, A]


@pytest.mark.parametrize(
    "behaviour, state",
    [("401", "disabled"), ("invalid-token", "disabled"), ("403", "disabled"), ("402", "exhausted"),
     ("credits", "exhausted"), ("429", "cooling")],
)
def test_a_keys_own_failure_moves_to_the_next_key_at_once(api, client, clock, behaviour, state):
    api.script = {A: [behaviour]}
    client.generate("x", {})
    assert api.keys_used() == [A, B]
    assert states(client) == [state, "active", "active"]
    assert clock.sleeps == []
    client.generate("x", {})
    client.generate("x", {})
    assert api.keys_used()[2:] == [C, B]  # the failed key is skipped


def test_retry_after_seconds_is_honoured(api, client, clock):
    api.script = {A: [("429", {"Retry-After": "120"}), "ok"]}
    client.generate("x", {})
    assert client.key_status()[0]["retry_in_seconds"] == 120
    clock.now += 119
    client.generate("x", {})
    client.generate("x", {})
    assert api.keys_used() == [A, B, C, B]
    clock.now += 1
    client.generate("x", {})
    client.generate("x", {})
    assert api.keys_used()[4:] == [C, A]
    assert states(client) == ["active"] * 3


def test_retry_after_as_a_date(api, client, clock):
    from email.utils import formatdate

    api.script = {A: [("429", {"Retry-After": formatdate(clock.now + 300, usegmt=True)})]}
    client.generate("x", {})
    assert 299 <= client.key_status()[0]["retry_in_seconds"] <= 300


def test_ratelimit_header_t(api, client):
    api.script = {A: [("429", {"RateLimit": '"api";r=0;t=77'})]}
    client.generate("x", {})
    assert client.key_status()[0]["retry_in_seconds"] == 77


def test_429_without_a_hint_backs_off_exponentially(api, client, clock):
    api.script = {A: ["429", "429", "ok"], B: ["401"], C: ["401"]}
    with pytest.raises(KeysUnavailable) as first:
        client.generate("x", {})
    assert client.key_status()[0]["retry_in_seconds"] == 30
    assert first.value.headers == {"Retry-After": "30"}
    clock.now += 30
    with pytest.raises(KeysUnavailable):
        client.generate("x", {})
    assert client.key_status()[0]["retry_in_seconds"] == 60
    clock.now += 60
    assert colour(client.generate("x", {})) == PURPLE


def test_exhausted_key_returns_after_its_long_rest(api, client, clock):
    api.script = {A: ["402", "ok"], B: ["401"], C: ["403"]}
    with pytest.raises(KeysUnavailable) as refused:
        client.generate("x", {})
    assert refused.value.code == "all_keys_busy" and refused.value.headers["Retry-After"] == "3600"
    assert "try again in 3600 s" in refused.value.message
    clock.now += 3600
    client.generate("x", {})
    assert api.keys_used() == [A, B, C, A]


def test_every_key_disabled(api, client):
    api.script = {A: ["401"], B: ["401"], C: ["403"]}
    with pytest.raises(KeysUnavailable) as refused:
        client.generate("x", {})
    assert refused.value.code == "all_keys_disabled" and "Retry-After" not in refused.value.headers


def test_no_key_configured(api, clock):
    client = HFClient([], "m", provider="hf-inference", router_url=api.url, clock=clock, sleep=clock.sleep)
    with pytest.raises(KeysUnavailable) as refused:
        client.generate("x", {})
    assert refused.value.message == "no Hugging Face API key configured: set HF_API_KEYS or HF_API_KEYS_FILE"
    assert api.requests == []


@pytest.mark.parametrize("behaviour", ["500", "reset"])
def test_server_failures_are_retried_without_blaming_a_key(api, client, clock, behaviour):
    api.script = {A: [behaviour], B: [behaviour], C: ["ok"]}
    assert colour(client.generate("x", {})) == PURPLE
    assert api.keys_used() == [A, B, C]
    assert len(clock.sleeps) == 2
    assert states(client) == ["active"] * 3


@pytest.mark.parametrize("behaviour, error, status", [("500", UpstreamError, 502), ("reset", UpstreamError, 502),
                                                      ("hang", UpstreamTimeout, 504)])
def test_retries_are_bounded(api, client, clock, behaviour, error, status):
    api.script = {key: [behaviour] for key in KEYS}
    with pytest.raises(error) as failed:
        client.generate("x", {})
    assert failed.value.status == status
    assert len(api.requests) == 3 and len(clock.sleeps) == 2
    assert states(client) == ["active"] * 3


def test_the_overall_deadline_bounds_retries(api, clock):
    client = HFClient(KEYS, "m", provider="hf-inference", router_url=api.url, clock=clock, sleep=clock.sleep,
                      deadline=3, max_tries=10)
    api.script = {key: ["500"] for key in KEYS}
    with pytest.raises(UpstreamError):
        client.generate("x", {})
    assert sum(clock.sleeps) <= 3 and len(api.requests) < 10


def test_model_loading_waits_once_then_retries(api, client, clock):
    api.script = {A: ["loading"], B: ["ok"]}
    client.generate("x", {})
    assert clock.sleeps == [20.5]
    assert states(client) == ["active"] * 3


def test_model_still_loading_after_the_wait(api, clock):
    client = HFClient(KEYS, "m", provider="hf-inference", router_url=api.url, clock=clock, sleep=clock.sleep,
                      max_tries=1)
    api.script = {key: ["loading"] for key in KEYS}
    with pytest.raises(UpstreamError) as failed:
        client.generate("x", {})
    assert "Model is loading" in failed.value.message
    assert clock.sleeps == [20.5] and len(api.requests) == 2


@pytest.mark.parametrize(
    "behaviour, error, status, text",
    [("400", UpstreamRejected, 400, "height must be a multiple of 8"),
     ("422", UpstreamRejected, 400, "inputs must be text"),
     ("404", UpstreamError, 502, "Model not found"),
     ("410", ModelNotServed, 503, "no longer supported")],
)
def test_rejections_are_not_retried_and_blame_no_key(api, client, clock, behaviour, error, status, text):
    api.script = {A: [behaviour]}
    with pytest.raises(error) as rejected:
        client.generate("x", {})
    assert rejected.value.status == status and text in rejected.value.message
    assert len(api.requests) == 1 and clock.sleeps == []
    assert states(client) == ["active"] * 3


@pytest.mark.parametrize("behaviour", ["html", "truncated", "webp"])
def test_an_answer_that_is_not_an_image_is_an_upstream_error(api, client, behaviour):
    api.script = {A: [behaviour]}
    with pytest.raises(UpstreamError) as failed:
        client.generate("x", {})
    assert "without a readable PNG or JPEG" in failed.value.message


def test_keys_never_leave_the_client(api, client, caplog):
    api.script = {A: ["401"], B: ["echo-key", "ok"], C: ["429"]}
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(UpstreamRejected) as rejected:
            client.generate("x", {})
        client.generate("x", {})
    shown = rejected.value.message + repr(client.key_status()) + caplog.text
    assert "bad request Bearer [hidden]" in rejected.value.message
    assert fragments_in(shown, KEYS) == []


@pytest.mark.parametrize("behaviour", ["echo-key-late", "echo-key-pieces"])
def test_no_fragment_of_a_key_survives_an_error_message(api, client, caplog, behaviour):
    api.script = {A: [behaviour]}
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(UpstreamRejected) as rejected:
            client.generate("x", {})
    assert "[hidden]" in rejected.value.message
    assert fragments_in(rejected.value.message + caplog.text, KEYS) == []


def test_redactor_hides_every_run_of_eight_or_more():
    redact = Redactor(["hf_secretSECRET1234", "short"])
    assert redact("a hf_secretSECRET1234 b") == "a [hidden] b"
    assert redact("tail SECRET1234.") == "tail [hidden]."
    assert redact("half secretSE and cretSECR overlap") == "half [hidden] and [hidden] overlap"
    assert redact("seven: SECRET1 is shown") == "seven: SECRET1 is shown"
    assert redact("a short key") == "a [hidden] key"
    assert Redactor([])("nothing hidden") == "nothing hidden"


def test_a_leak_check_finds_any_run_of_eight_and_nothing_by_chance():
    assert fragments_in(f"token ...{KEYS[1][9:17]}...", KEYS) == [KEYS[1][9:17]]
    chance = "127.0.0.1:33331 2026-03-31T23:59:59.123+00:00 5f1c09ab 0b1f3c4e-2a6d-4e8f-9c0d-1e2f3a4b5c6d"
    assert fragments_in(chance + repr(KEYS[0][:7]), KEYS) == []


def test_status_names_keys_by_position_and_fingerprint(client):
    status = client.key_status()
    assert [(entry["position"], entry["fingerprint"]) for entry in status] == [
        (1, fingerprint(A)), (2, fingerprint(B)), (3, fingerprint(C))]
    assert all(len(entry["fingerprint"]) == 8 for entry in status)
    assert fragments_in(repr(status), KEYS) == []


def test_read_keys():
    assert read_keys(" a1 , b2,,a1 ", ",") == ["a1", "b2"]
    assert read_keys("# my keys\nk1\n\n  k2  # the spare\n") == ["k1", "k2"]


def test_concurrent_requests_share_the_pool(api, clock):
    import threading

    client = HFClient(KEYS, "stabilityai/sdxl", provider="hf-inference", router_url=api.url, clock=clock,
                      sleep=clock.sleep, timeout=10)
    threads = [threading.Thread(target=client.generate, args=("x", {})) for _ in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(api.keys_used()) == sorted(KEYS * 3)
