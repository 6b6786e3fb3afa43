"""The OpenAI-compatible API under /v1 (a blueprint): models, chat completions about an image, image generation.

As LocalAI and vLLM write theirs: OpenAI's request is read into our own actions' arguments here, at the edge,
and our answer is shaped back into OpenAI's JSON (the OpenAI API reference's chat.completion,
chat.completion.chunk, model list and images response); nothing else knows these shapes. Errors on /v1 take
OpenAI's shape too (guards.error_response), so that the SDKs raise their own exception classes.
"""

import base64
import binascii
import hashlib
import json
import re
import time
import uuid

from flask import Blueprint, Response, current_app, jsonify, request, session, stream_with_context, url_for

import actions
import field_checks
from actions import MAX_IMAGES, MAX_QUESTION, service
from api import client_gone, request_fields
from errors import InvalidInput, NotFound
from guards import api_key

bp = Blueprint("v1", __name__, url_prefix="/v1")

CHAT_MODEL = "image-assistant"
# Questions that ask for a description get the caption, not a VQA answer (compared lower case, without the
# final punctuation). Anything else is a question for the VQA model.
DESCRIBE = re.compile(
    r"\b(describe|description|caption)\b"
    r"|^what(?:'s|s| is| do you see)?(?: (?:in|on) (?:this|the) (?:image|picture|photo|pic))?$"
    r"|^what(?:'s|s| is) (?:in|on|this|that) (?:this |the )?(?:image|picture|photo|pic)"
    r"|^what does (?:this|the|it) (?:image |picture |photo )?show"
    r"|^what(?:'s|s| is) (?:this|that|it)$"
    r"|^what do you see|^what is shown")
DATA_URI = re.compile(r"data:(image/(?:png|jpeg|jpg));base64,(.*)", re.DOTALL | re.IGNORECASE)
SIZE = re.compile(r"([0-9]{1,5})[xX]([0-9]{1,5})")


@bp.before_request
def body_and_owner():
    # An image comes base64-encoded in JSON: 4/3 of its bytes, where the app's limit is set for a multipart upload.
    request.max_content_length = current_app.config["MAX_CONTENT_LENGTH"] * 4 // 3 + 64 * 1024
    # With AUTH off the history is a cookie session's, but OpenAI's clients keep no cookies: the key they send
    # (any key goes) stands for the session, so that a conversation's turns find the image sent before.
    key = api_key(request)
    if not current_app.config["AUTH_ON"] and key and "owner" not in session:
        session["owner"] = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


@bp.get("/models")
def models():
    return jsonify(object="list", data=model_list())


@bp.get("/models/<path:model_id>")
def model(model_id):
    found = [entry for entry in model_list() if entry["id"] == model_id]
    if not found:
        raise NotFound(f"the model '{model_id}' is not served here: GET /v1/models lists them",
                       code="model_not_found")
    return jsonify(found[0])


def model_list() -> list[dict]:
    """The chat model and the image model, as OpenAI lists models."""
    created = int(current_app.config["STARTED_AT"])
    return [{"id": CHAT_MODEL, "object": "model", "created": created, "owned_by": "image-assistant"},
            {"id": current_app.config["SD_MODEL"], "object": "model", "created": created, "owned_by": "huggingface"}]


@bp.post("/chat/completions")
def chat_completions():
    body = request_fields()
    model = body.get("model")
    if model != CHAT_MODEL:
        given = "no model was named" if model is None else f"the model '{model}' is not served here"
        raise InvalidInput(f"{given}: use '{CHAT_MODEL}' (GET /v1/models lists them)", code="model_not_found")
    image, question = read_chat(body.get("messages"))
    # Chat clients send the whole conversation at every turn: an image sent before is kept once, and its
    # question context, cached since, makes a later turn cost what a /question does.
    record = actions.image_for_chat(image, client_gone)
    if wants_description(question):
        content = record["caption"]
    else:
        _, content = actions.ask_about(record["image_id"], question, client_gone)
    answer_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.get("stream") is True:
        return Response(stream_with_context(chunks(answer_id, created, content)), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache"})
    prompt_tokens = service("models").token_count(question)
    completion_tokens = service("models").token_count(content)
    return jsonify(id=answer_id, object="chat.completion", created=created, model=CHAT_MODEL, choices=[
        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
               "total_tokens": prompt_tokens + completion_tokens})


def chunks(answer_id: str, created: int, content: str):
    """The answer as server-sent events of chat.completion.chunk: the role, the text, the end, then [DONE]."""
    for delta, finish in (({"role": "assistant", "content": ""}, None), ({"content": content}, None), ({}, "stop")):
        chunk = {"id": answer_id, "object": "chat.completion.chunk", "created": created, "model": CHAT_MODEL,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"


def read_chat(messages) -> tuple[bytes, str]:
    """The conversation's last image (its bytes) and its last user text ('' when there is none)."""
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("'messages' must be a list of {role, content}", code="invalid_messages")
    image, question = None, ""
    for message in messages:  # the question is the text of the last user message (none: the caption)
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "developer"):
            raise InvalidInput("each message is {role: system, user or assistant, content}", code="invalid_messages")
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if message["role"] == "user":
            question = ""
        if parts is None:
            continue
        if not isinstance(parts, list):
            raise InvalidInput("a message's content is a string or a list of parts", code="invalid_messages")
        for part in parts:
            if not isinstance(part, dict):
                raise InvalidInput("a content part is {type: text, text} or {type: image_url, image_url: {url}}",
                                   code="invalid_messages")
            if part.get("type") == "image_url":
                image = image_bytes(part.get("image_url"))
            elif part.get("type") == "text" and message["role"] == "user" and isinstance(part.get("text"), str):
                question = part["text"]
    if image is None:
        raise InvalidInput(f"the model '{CHAT_MODEL}' answers about images: send one as an image_url part (a "
                           "data:image/png;base64,... or data:image/jpeg;base64,... URI)", code="image_required")
    checked = field_checks.text({"question": question}, "question", max_length=MAX_QUESTION, required=False)
    return image, checked or ""


def image_bytes(image_url) -> bytes:
    """The bytes of an image_url part: a data: URI, or bare base64; remote URLs are refused."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("an image_url part needs {url: data:image/...;base64,...}", code="invalid_image_url")
    url = url.strip()
    if url.lower().startswith(("http://", "https://")):
        raise InvalidInput("this server does not fetch images from other addresses: send the image itself, as a "
                           "data:image/png;base64,... URI", code="remote_image_url")
    found = DATA_URI.fullmatch(url)
    if url.lower().startswith("data:") and found is None:
        raise InvalidInput("a data: URI here is data:image/png;base64,... or data:image/jpeg;base64,...",
                           code="invalid_image_url")
    encoded = found.group(2) if found else url
    limit = current_app.config["MAX_IMAGE_BYTES"]
    if len(encoded) > (limit + 2) // 3 * 4 + 4096:  # base64 of MAX_IMAGE_BYTES, with room for line breaks
        raise InvalidInput(f"the image is over {limit // 2**20} MB", code="file_too_large")
    try:
        return base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("the image_url is neither a data: URI nor base64: send data:image/png;base64,...",
                           code="invalid_image_url") from None


def wants_description(question: str) -> bool:
    """Whether a question asks for the image's description (or there is none): it says describe, description or
    caption, or asks what is in the image, what it shows, or what you see."""
    asked = " ".join(question.replace("\u2019", "'").lower().split()).rstrip("?.! ")
    asked = re.sub(r"^(?:please |can you |could you |would you )+", "", asked)
    return not asked or DESCRIBE.search(asked) is not None


@bp.post("/images/generations")
def images_generations():
    body = request_fields()
    prompt = field_checks.text(body, "prompt", max_length=actions.MAX_DESCRIPTION)
    model = body.get("model")
    if model is not None and model != current_app.config["SD_MODEL"]:
        raise InvalidInput(f"the model '{model}' is not served here: use '{current_app.config['SD_MODEL']}' or "
                           "leave 'model' out", code="model_not_found")
    response_format = body.get("response_format") or "b64_json"
    if response_format not in ("b64_json", "url"):
        raise InvalidInput("'response_format' is b64_json or url", code="invalid_response_format")
    fields = {name: body[name] for name in ("negative_prompt", "seed", "num_inference_steps", "guidance_scale")
              if name in body}
    count = field_checks.number(body, "n", low=1, high=MAX_IMAGES, default=1)
    fields.update(description=prompt, num_images=count, **size(body.get("size")))
    made, _ = actions.generate(fields)
    data = [{"b64_json": base64.b64encode(file.data).decode("ascii")} if response_format == "b64_json" else
            {"url": url_for("api.generated_file", name=record["filename"], _external=True)}
            for record, file in made]
    return jsonify(created=int(time.time()), data=data)


def size(given) -> dict:
    """width and height from OpenAI's size 'WxH' (checked as /generate checks them); none when absent."""
    if given is None or given == "auto":
        return {}
    found = SIZE.fullmatch(given) if isinstance(given, str) else None
    width, height = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
    if not (256 <= width <= 1536 and 256 <= height <= 1536 and width % 8 == 0 and height % 8 == 0):
        raise InvalidInput(f"'size' is {given!r}: use WIDTHxHEIGHT, each from 256 to 1536 and a multiple of 8 "
                           "(e.g. 1024x1024)", code="invalid_size")
    return {"width": width, "height": height}

