"""The OpenAI-compatible API under /v1, driven by the official `openai` package against a real server on
127.0.0.1 (`python app.py`, AUTH=on, the tiny BLIP models, the tests' Hugging Face router)."""

import base64
import os
import subprocess

import openai
import pytest
import requests

import servers
from conftest import HUGGING_FACE, image_bytes
from fake_hf import chance_proof

pytestmark = pytest.mark.timeout(240)  # a real process

FLASK = os.path.join(os.path.dirname(servers.PYTHON), "flask")
HF_KEYS = chance_proof("hf_oaiCobaltFernDrift", "hf_oaiAmberKiteRidge")
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def server(tiny_blip, tmp_path_factory):
    """The server's base URL and an API key of its one account (made with the real commands)."""
    folder = tmp_path_factory.mktemp("openai")
    port = servers.free_port()
    env = {"CAPTION_MODEL": tiny_blip["caption"], "VQA_MODEL": tiny_blip["vqa"], "HOST": "127.0.0.1",
           "PORT": str(port), "AUTH": "on", "SECRET_KEY": "openai-tests", "UPLOAD_FOLDER": str(folder / "uploads"),
           "GENERATED_FOLDER": str(folder / "generated"), "HISTORY_FILE": str(folder / "history.json"),
           "CAPTION_MAX_LENGTH": "8", "VQA_MAX_LENGTH": "4", "HF_API_KEYS": ",".join(HF_KEYS),
           "HF_ROUTER_URL": HUGGING_FACE.url, "HF_PROVIDER": "hf-inference", "SD_MODEL": "some/model",
           "RATE_LIMIT": "1000/minute", "GENERATIONS_PER_DAY": "4"}
    process = servers.start([servers.PYTHON, "app.py"], env, str(folder / "server.log"))
    base = f"http://127.0.0.1:{port}"
    try:
        servers.wait_until_up(base + "/healthz", process)
        run = dict(cwd=servers.ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, capture_output=True,
                   text=True, timeout=60)
        assert subprocess.run([FLASK, "--app", "app", "users", "create", "ada"], input=PASSWORD + "\n",
                              **run).returncode == 0
        made = subprocess.run([FLASK, "--app", "app", "keys", "create", "ada"], **run)
        yield base, made.stdout.strip().splitlines()[-1]
    finally:
        servers.stop(process)


@pytest.fixture
def client(server):
    base, key = server
    return openai.OpenAI(base_url=base + "/v1", api_key=key, timeout=90, max_retries=0)


def data_uri(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"


def ask(client, text, url, **extra):
    return client.chat.completions.create(model="image-assistant", messages=[{"role": "user", "content": [
        {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}], **extra)


def test_models_lists_the_chat_model_and_the_image_model(client):
    assert [model.id for model in client.models.list()] == ["image-assistant", "some/model"]


def test_a_description_is_the_caption_and_a_question_gets_an_answer(client, server):
    picture = image_bytes("PNG", size=(64, 48), color=(200, 30, 30))
    headers = {"Authorization": f"Bearer {server[1]}"}
    before = requests.get(server[0] + "/history", headers=headers, timeout=30).json()["total_images"]
    described = ask(client, "Describe this image.", data_uri(picture))
    assert described.object == "chat.completion" and described.choices[0].finish_reason == "stop"
    assert isinstance(described.choices[0].message.content, str)
    assert described.usage.total_tokens == described.usage.prompt_tokens + described.usage.completion_tokens
    answered = ask(client, "what color is it?", base64.b64encode(picture).decode())  # bare base64
    assert isinstance(answered.choices[0].message.content, str)
    history = requests.get(server[0] + "/history", headers=headers, timeout=30).json()
    assert history["total_images"] == before + 1  # kept in the account's history, once: the same bytes both times


def test_a_streamed_answer_ends_with_done(client):
    stream = ask(client, "what is it?", data_uri(image_bytes("JPEG", size=(40, 40)), "jpeg"), stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "stop"
    assert isinstance("".join(chunk.choices[0].delta.content or "" for chunk in chunks), str)


def test_every_refusal_raises_the_sdks_own_exception_with_a_useful_message(client, server):
    with pytest.raises(openai.BadRequestError, match="answers about images"):
        client.chat.completions.create(model="image-assistant", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="does not fetch images"):
        ask(client, "what is it?", "https://example.org/cat.png")
    with pytest.raises(openai.BadRequestError, match="not served here") as refused:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["param"] == "model" and refused.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="only PNG and JPEG images can be read here"):
        ask(client, "what is it?", data_uri(b"GIF89a" + b"\0" * 40))
    with pytest.raises(openai.BadRequestError, match="'size'") as refused:
        client.images.generate(prompt="a cat", size="100x100")
    assert refused.value.body["param"] == "size"
    stranger = openai.OpenAI(base_url=server[0] + "/v1", api_key="ia_not-a-key", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError, match="sign in first"):
        stranger.models.list()


def test_images_generate_with_each_response_format_and_n_2(client, server):
    HUGGING_FACE.reset()
    made = client.images.generate(prompt="a lighthouse", n=2, size="512x512")
    assert len(made.data) == 2 and all(base64.b64decode(image.b64_json).startswith(b"\x89PNG") for image in made.data)
    linked = client.images.generate(prompt="a lighthouse", response_format="url", model="some/model",
                                    quality="hd", style="vivid", user="someone")
    fetched = requests.get(linked.data[0].url, headers={"Authorization": f"Bearer {server[1]}"}, timeout=30)
    assert fetched.status_code == 200 and fetched.headers["Content-Type"] == "image/png"
    assert len(HUGGING_FACE.requests) == 3
    assert requests.get(linked.data[0].url, timeout=30).status_code == 401  # the same key can fetch it; no one else
    with pytest.raises(openai.RateLimitError, match="3 of its 4 generations in the last 24 hours") as refused:
        client.images.generate(prompt="a lighthouse", n=2)  # the quota counts /v1's generations as any others
    assert refused.value.body["code"] == "quota_exceeded" and len(HUGGING_FACE.requests) == 3


def test_an_image_sent_again_is_kept_once_and_its_context_reused(client, server):
    base, key = server
    headers = {"Authorization": f"Bearer {key}"}
    picture = image_bytes("PNG", size=(52, 44), color=(10, 120, 240))
    before = requests.get(base + "/history", headers=headers, timeout=30).json()["total_images"]
    turns = [{"role": "user", "content": [{"type": "text", "text": "Describe this image."},
                                          {"type": "image_url", "image_url": {"url": data_uri(picture)}}]}]
    first = client.chat.completions.create(model="image-assistant", messages=turns)
    turns += [{"role": "assistant", "content": first.choices[0].message.content},
              {"role": "user", "content": "what color is it?"}]
    client.chat.completions.create(model="image-assistant", messages=turns)
    history = requests.get(base + "/history", headers=headers, timeout=30).json()
    assert history["total_images"] == before + 1
    newest = history["images"][0]  # the one image both turns sent, asked about in the second
    assert newest["caption"] == first.choices[0].message.content
    assert [entry["question"] for entry in newest["questions"]] == ["what color is it?"]
