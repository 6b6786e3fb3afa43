"""/v1's reading of OpenAI's requests, in-process: odd bodies are clear 4xx in OpenAI's error shape, never a 500.
The official SDK drives a real server in test_openai_api.py."""

import base64

import pytest

from conftest import image_bytes

PNG = "data:image/png;base64," + base64.b64encode(image_bytes()).decode()


def chat(client, messages, **fields):
    return client.post("/v1/chat/completions", json={"model": "image-assistant", "messages": messages, **fields})


@pytest.mark.parametrize("messages", [
    None, [], "hello", [None], [{"role": "robot", "content": "hi"}], [{"role": "user", "content": 5}],
    [{"role": "user", "content": [5]}], [{"role": "user", "content": [{"type": "image_url", "image_url": 7}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "not base64 at all!"}}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://example.org/a.png"}}]}],
    [{"role": "user", "content": [{"type": "text", "text": "\ud800"}, {"type": "image_url", "image_url": PNG}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
])
def test_odd_chats_are_clear_refusals_in_openais_shape(make_app, messages):
    response = chat(make_app().test_client(), messages)
    assert response.status_code == 400, response.json
    error = response.json["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["message"] and error["code"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "a cat", "size": 1024}, "size"), ({"prompt": "a cat", "size": "1024"}, "size"),
    ({"prompt": "a cat", "size": "1024x100000"}, "size"), ({"prompt": "a cat", "n": 0}, "n"),
    ({"prompt": "a cat", "n": "2x"}, "n"), ({"prompt": "a cat", "response_format": "png"}, "response_format"),
    ({"prompt": "a cat", "model": "dall-e-3"}, "model"), ({"prompt": ""}, "prompt"), ({}, "prompt"),
])
def test_odd_image_requests_name_their_field(make_app, body, param):
    response = make_app().test_client().post("/v1/images/generations", json=body)
    assert response.status_code == 400, response.json
    assert response.json["error"]["param"] == param


def test_with_auth_off_any_key_or_none_is_taken(make_app):
    client = make_app(AUTH="off").test_client()
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/models", headers={"Authorization": "Bearer sk-anything"}).status_code == 200
    answered = chat(client, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}],
                    stream=False, temperature=0.2, max_tokens=5)  # fields OpenAI has and this API ignores
    assert answered.status_code == 200 and answered.json["choices"][0]["message"]["content"] == "a fake caption"


def test_unknown_routes_under_v1_answer_in_openais_shape(make_app):
    response = make_app().test_client().get("/v1/embeddings")
    assert response.status_code == 404 and response.json["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("question, caption", [
    ("", True), ("Describe this image.", True), ("Can you describe this image?", True), ("Give me a caption", True),
    ("what\u2019s in the image?", True), ("What is in the picture?", True), ("what is this?", True),
    ("what does this picture show?", True), ("what color is the car?", False), ("what is the man holding?", False),
])
def test_a_description_is_asked_in_many_words(question, caption):
    from openai_api import wants_description

    assert wants_description(question) is caption


def test_the_question_is_the_text_of_the_last_user_message(make_app):
    client = make_app().test_client()
    first = {"role": "user", "content": [{"type": "text", "text": "what color is the car?"},
                                         {"type": "image_url", "image_url": {"url": PNG}}]}
    image_only = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}
    answered = chat(client, [first, {"role": "assistant", "content": "red"}, image_only])
    assert answered.json["choices"][0]["message"]["content"] == "a fake caption"  # not an answer to the old question


def test_with_auth_off_the_key_stands_for_the_session(make_app):
    app = make_app(AUTH="off")
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}]
    for _ in range(2):  # a client that keeps no cookies
        app.test_client(use_cookies=False).post("/v1/chat/completions", headers={"Authorization": "Bearer sk-x"},
                                                json={"model": "image-assistant", "messages": messages})
    assert len(list(app.extensions["history"].all_records())) == 1


def test_a_model_is_retrieved_by_its_id(make_app):
    client = make_app().test_client()
    assert client.get("/v1/models/image-assistant").json["id"] == "image-assistant"
    assert client.get("/v1/models/gpt-4o").status_code == 404


def test_an_image_near_the_upload_limit_fits_in_base64(make_app):
    app = make_app()
    near = b"\x89PNG\r\n\x1a\n" + b"\0" * (app.config["MAX_IMAGE_BYTES"] - 1024 * 1024)  # 15 MB, not an image
    url = "data:image/png;base64," + base64.b64encode(near).decode()
    response = chat(app.test_client(), [{"role": "user", "content": [{"type": "image_url", "image_url": url}]}])
    assert response.status_code == 400 and response.json["error"]["code"] != "file_too_large"


def test_an_image_sent_in_several_requests_at_once_is_kept_once(make_app):
    from concurrent.futures import ThreadPoolExecutor

    app = make_app()
    picture = "data:image/png;base64," + base64.b64encode(image_bytes(size=(41, 37))).decode()
    body = {"model": "image-assistant", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": picture}}]}]}

    def send(_):
        return app.test_client(use_cookies=False).post("/v1/chat/completions", json=body,
                                                       headers={"Authorization": "Bearer sk-same"}).status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(send, range(6))) == [200] * 6
    assert len(list(app.extensions["history"].all_records())) == 1
