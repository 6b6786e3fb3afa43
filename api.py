"""The JSON API: each view reads the request, calls one action, and shapes the answer."""

import base64
import select
import socket

from flask import Blueprint, current_app, jsonify, request, send_from_directory

import actions
import field_checks
import images
import settings
import storage
from actions import service
from errors import InvalidInput, NotFound

bp = Blueprint("api", __name__)

PAGE_LIMIT = 200


def request_fields():
    """The request's fields: a JSON object body, or form fields."""
    if not request.is_json:
        return request.form
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the parser goes: not a body of fields either
        body = None
    if not isinstance(body, dict):
        raise InvalidInput("the body is not a JSON object: send fields as {\"name\": \"value\", ...}",
                           code="invalid_json")
    return body


def client_gone() -> bool:
    """Whether the caller closed the connection while waiting (gunicorn and werkzeug expose the socket)."""
    connection = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if connection is None:
        return False
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except ValueError:  # a TLS socket cannot peek: no way to tell, so the caller is taken to be there
        return False
    except OSError:
        return True


def with_image(view: dict, data: bytes) -> dict:
    """A view with the image itself, base64-encoded."""
    return {**view, "image": base64.b64encode(data).decode("ascii")}


def image_wanted() -> bool:
    """Whether the answer carries the image as base64: yes, unless ?include_image=0 (for terminals)."""
    value = request.args.get("include_image", "1").strip().lower()
    if value not in settings.TRUE | settings.FALSE:
        raise InvalidInput("'include_image' must be 1 or 0", code="invalid_include_image")
    return value in settings.TRUE


@bp.post("/upload")
def upload():
    include = image_wanted()
    record, stored = actions.upload(request.files, request.form, client_gone)
    view = actions.image_view(record)
    return jsonify(with_image(view, stored.data) if include else view), 201


@bp.post("/question")
def question():
    record, answer = actions.ask(request_fields(), client_gone)
    thread = actions.thread(record)
    return jsonify(image_id=record["image_id"], question=thread[-1]["question"], answer=answer,
                   caption=record["caption"], history=thread)


@bp.post("/generate")
def generate():
    include = image_wanted()
    made, failed = actions.generate(request_fields())
    answers = [with_image(actions.generation_view(record), file.data) if include else actions.generation_view(record)
               for record, file in made]
    if len(answers) == 1 and failed is None:
        return jsonify(answers[0]), 201
    return jsonify(generations=answers, **({"failed": failed} if failed else {})), 201


@bp.get("/history")
def history():
    limit = field_checks.number(request.args, "limit", low=1, high=PAGE_LIMIT, default=50)
    offset = field_checks.number(request.args, "offset", low=0, high=10**9, default=0)
    return jsonify(actions.history_page(limit, offset))


@bp.delete("/images/<image_id>")
def delete_image(image_id):
    actions.delete_image(image_id)
    return "", 204


@bp.delete("/generations/<generation_id>")
def delete_generation(generation_id):
    actions.delete_generation(generation_id)
    return "", 204


@bp.delete("/history")
def clear_history():
    actions.clear_history()
    return "", 204


@bp.get("/images/<image_id>")
def image(image_id):
    return jsonify(actions.image_view(actions.readable("images", image_id)))


@bp.get("/generations/<generation_id>")
def generation(generation_id):
    return jsonify(actions.generation_view(actions.readable("generations", generation_id)))


@bp.get("/uploads/<name>")
def uploaded_file(name):
    return send_stored("images", current_app.config["UPLOAD_FOLDER"], name)


@bp.get("/generated/<name>")
def generated_file(name):
    return send_stored("generations", current_app.config["GENERATED_FOLDER"], name)


def send_stored(kind: str, folder: str, name: str):
    """A stored image, always with its image content type (and nosniff, as every response); with AUTH on, only
    the file of a record the caller may read (a stored file is named by its record's id)."""
    found = storage.STORED_NAME.fullmatch(name)
    missing = NotFound("there is no stored image by that name: use the image_url an answer gave",
                       code="file_not_found")
    if found is None:
        raise missing
    if current_app.config["AUTH_ON"]:
        try:
            if actions.readable(kind, name[: -len(found.group(1))])["filename"] != name:
                raise missing
        except NotFound:
            raise missing from None
    return send_from_directory(folder, name, mimetype=images.MIME_TYPES[found.group(1)])


@bp.get("/healthz")
def healthz():
    models = {role: model_status(service(role)) for role in ("captioner", "answerer")}
    ready = all(model["ready"] for model in models.values())
    if current_app.config["AUTH_ON"] and not actions.signed_in_admin():
        return jsonify(status="ok" if ready else "unavailable"), 200 if ready else 503  # the details are for admins
    body = {"status": "ok" if ready else "unavailable", "models": models,
            "queue": service("models").status(),
            "generation": service("hf_client").status(), "keys": service("hf_client").key_status(),
            "demo": current_app.config["DEMO"]}
    if current_app.config["DEMO"]:
        body["notice"] = settings.DEMO_NOTICE
    return jsonify(body), 200 if ready else 503


def model_status(model) -> dict:
    """What /healthz says of one model."""
    status = {"name": getattr(model, "name", type(model).__name__), "ready": getattr(model, "ready", True)}
    if not status["ready"]:
        status["error"] = model.message
    return status
