"""The image assistant: create_app() wires settings, services, routes and JSON errors.

`from app import create_app` loads nothing. `python app.py` and `gunicorn app:app` load both
models before the first request: `app` is a lazy module attribute (PEP 562) built on first use.
"""

import base64
import logging
import os
import secrets
import tempfile
import uuid
from datetime import datetime, timezone

from flask import Flask, current_app, jsonify, render_template, request, send_from_directory, session, url_for
from PIL import Image
from werkzeug.exceptions import HTTPException
from werkzeug.utils import secure_filename

import fields
import images
import settings
from errors import AppError, InvalidInput, NotFound
from history import History

log = logging.getLogger(__name__)

MAX_QUESTION = 500
MAX_PROMPT = 200
MAX_DESCRIPTION = 1000
PAGE_LIMIT = 200

HTTP_ERRORS = {
    400: ("bad_request", "the request could not be read: check its fields and body"),
    404: ("not_found", "there is nothing at this address: check the URL"),
    405: ("method_not_allowed", "this address does not take that method: see the README for the API"),
    413: ("file_too_large", "the request is too large: images may be at most 16 MB"),
}


def create_app(config=None, *, captioner=None, answerer=None, hf_client=None):
    """Build the app: defaults, then the environment, then config; real models only if none given."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(settings.DEFAULTS)
    app.config.from_mapping(settings.from_environment(os.environ))
    app.config.from_mapping(config or {})
    for folder in ("UPLOAD_FOLDER", "GENERATED_FOLDER", "HISTORY_FILE"):
        app.config[folder] = os.path.join(app.root_path, app.config[folder])
    # Room for the multipart envelope around a file of MAX_IMAGE_BYTES.
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_IMAGE_BYTES"] + 64 * 1024
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.secret_key = app.config["SECRET_KEY"] or instance_secret_key(app.instance_path)
    app.json.sort_keys = False

    if captioner is None or answerer is None:
        loaded_captioner, loaded_answerer = load_models(app.config, captioner is None, answerer is None)
        captioner = captioner or loaded_captioner
        answerer = answerer or loaded_answerer
    app.extensions["captioner"] = captioner
    app.extensions["answerer"] = answerer
    app.extensions["hf_client"] = hf_client or build_hf_client(app.config)
    app.extensions["history"] = History(app.config["HISTORY_FILE"])
    os.makedirs(app.config["UPLOAD_FOLDER"], exist_ok=True)

    register_errors(app)
    register_routes(app)
    return app


def load_models(config, need_captioner: bool, need_answerer: bool):
    """Load the real BLIP models named by the settings (torch is imported only here)."""
    import models

    captioner = answerer = None
    if need_captioner:
        captioner = models.load(
            models.Captioner, config["CAPTION_MODEL"], "CAPTION_MODEL", config["DEVICE"],
            dict(num_beams=config["CAPTION_NUM_BEAMS"], min_length=config["CAPTION_MIN_LENGTH"],
                 max_length=config["CAPTION_MAX_LENGTH"]),
        )
    if need_answerer:
        answerer = models.load(
            models.Answerer, config["VQA_MODEL"], "VQA_MODEL", config["DEVICE"],
            dict(num_beams=config["VQA_NUM_BEAMS"], max_length=config["VQA_MAX_LENGTH"]),
        )
    return captioner, answerer


def build_hf_client(config):
    """The inference API client with the keys from HF_API_KEYS_FILE, else HF_API_KEYS."""
    from hf_client import HFClient, read_keys

    keys = read_keys(config["HF_API_KEYS"], ",")
    if config["HF_API_KEYS_FILE"]:
        try:
            with open(config["HF_API_KEYS_FILE"], encoding="utf-8") as file:
                keys = read_keys(file.read())
        except OSError as error:
            log.error("HF_API_KEYS_FILE %s cannot be read (%s): image generation has no keys",
                      config["HF_API_KEYS_FILE"], error.strerror)
            keys = []
    return HFClient(keys, config["HF_INFERENCE_URL"], config["SD_MODEL"], timeout=config["HF_TIMEOUT"],
                    deadline=config["HF_DEADLINE"], max_tries=config["HF_MAX_TRIES"],
                    exhausted_cooldown=config["HF_EXHAUSTED_COOLDOWN"])


def instance_secret_key(instance_path: str) -> str:
    """The session key kept in the instance folder (0600), made once; the first worker's wins."""
    path = os.path.join(instance_path, "secret_key")
    if not os.path.exists(path):
        os.makedirs(instance_path, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=instance_path)  # mkstemp creates it 0600
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(32))
                file.flush()
                os.fsync(file.fileno())
            os.link(temporary, path)  # fails if another process made it first: then use theirs
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    with open(path, encoding="ascii") as file:
        return file.read().strip()


def register_errors(app: Flask) -> None:
    """Every error becomes {"error": ..., "code": ...} with its status."""

    @app.errorhandler(AppError)
    def app_error(error: AppError):
        return error_response(error.status, error.code, error.message, error.headers)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        code, message = HTTP_ERRORS.get(error.code, (None, error.description))
        code = code or (error.name or "error").lower().replace(" ", "_").replace("'", "")
        return error_response(error.code, code, message, dict(error.get_headers()) if error.code == 405 else {})

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal_error",
                              "something went wrong on the server and it was logged: try again, "
                              "and report it if it keeps happening")

    @app.after_request
    def no_sniffing(response):
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    """The one JSON shape of every error."""
    response = jsonify(error=message, code=code)
    response.status_code = status
    for name, value in (headers or {}).items():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def now() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def owner() -> str:
    """The caller's session id; a new session gets one, kept in its signed cookie."""
    if "owner" not in session:
        session["owner"] = uuid.uuid4().hex
        session.permanent = True
    return session["owner"]


def request_fields():
    """The request's fields: a JSON object body, or form fields."""
    if not request.is_json:
        return request.form
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput("the body is not a JSON object: send fields as {\"name\": \"value\", ...}",
                           code="invalid_json")
    return body


def service(name: str):
    """A service the app was built with (captioner, answerer, history, hf_client)."""
    return current_app.extensions[name]


def image_view(record: dict) -> dict:
    """An image record as the API shows it."""
    return {
        "image_id": record["image_id"],
        "caption": record["caption"],
        "prompt": record.get("prompt"),
        "original_name": record.get("original_name"),
        "mime_type": record["mime_type"],
        "image_url": url_for("uploaded_file", name=record["filename"]),
        "created_at": record["created_at"],
        "questions": record["questions"],
    }


def keep_upload(picture: images.Picture, caption: str, prompt: str | None, original_name: str) -> dict:
    """Store the image under a new id, then its record; neither stays without the other."""
    image_id = str(uuid.uuid4())
    filename = image_id + picture.extension
    path = images.store(current_app.config["UPLOAD_FOLDER"], filename, picture.data)
    record = {
        "image_id": image_id, "owner": owner(), "filename": filename,
        "original_name": secure_filename(original_name)[:100] or None, "mime_type": picture.mime_type,
        "prompt": prompt, "caption": caption, "created_at": now(), "questions": [],
    }
    try:
        service("history").add_image(record)
    except BaseException:
        images.remove(path)
        raise
    return record


def generation_parameters(given) -> dict:
    """The optional text-to-image parameters that were given, checked."""
    parameters = {
        "height": fields.number(given, "height", low=256, high=1536, multiple_of=8),
        "width": fields.number(given, "width", low=256, high=1536, multiple_of=8),
        "num_inference_steps": fields.number(given, "num_inference_steps", low=1, high=100),
        "guidance_scale": fields.number(given, "guidance_scale", low=0, high=30, kind=float),
        "negative_prompt": fields.text(given, "negative_prompt", max_length=MAX_DESCRIPTION, required=False),
        "seed": fields.number(given, "seed", low=0, high=2**32 - 1),
    }
    return {name: value for name, value in parameters.items() if value is not None}


def keep_generation(image, description: str, parameters: dict) -> dict:
    """Store a generated image under a new id, then its record; neither stays without the other."""
    generation_id = str(uuid.uuid4())
    filename = generation_id + image.extension
    path = images.store(current_app.config["GENERATED_FOLDER"], filename, image.data)
    record = {
        "generation_id": generation_id, "owner": owner(), "description": description,
        "parameters": parameters, "filename": filename, "mime_type": image.mime_type,
        "path": shown_path(path), "created_at": now(),
    }
    try:
        service("history").add_generation(record)
    except BaseException:
        images.remove(path)
        raise
    return record


def shown_path(path: str) -> str:
    """A saved file's path relative to the app folder, or absolute when it lies outside it."""
    relative = os.path.relpath(path, current_app.root_path)
    return path if relative.startswith("..") else relative


def generation_view(record: dict) -> dict:
    """A generation record as the API shows it."""
    return {
        "generation_id": record["generation_id"],
        "description": record["description"],
        "parameters": record["parameters"],
        "mime_type": record["mime_type"],
        "path": record["path"],
        "image_url": url_for("generated_file", name=record["filename"]),
        "created_at": record["created_at"],
    }


def stored_pixels(record: dict) -> Image.Image:
    """The stored image of a record, decoded to RGB."""
    path = os.path.join(current_app.config["UPLOAD_FOLDER"], record["filename"])
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise NotFound(f"the file of image '{record['image_id']}' is gone from the upload folder: "
                       "upload the image again", code="image_file_missing") from None


def register_routes(app: Flask) -> None:
    """The page and the JSON API."""

    @app.get("/")
    def index():
        return render_template("index.html", demo=current_app.config["DEMO"], demo_notice=DEMO_NOTICE)

    @app.post("/upload")
    def upload():
        file = request.files.get("image")
        if file is None:
            raise InvalidInput("no image in the request: send the file in the multipart field 'image'",
                               code="missing_image")
        images.check_filename(file.filename or "")
        prompt = fields.text(request.form, "prompt", max_length=MAX_PROMPT, required=False)
        picture = images.read_image(file.stream, max_pixels=current_app.config["MAX_IMAGE_PIXELS"],
                                    max_bytes=current_app.config["MAX_IMAGE_BYTES"])
        caption = service("captioner").caption(picture.pixels, prompt)
        record = keep_upload(picture, caption, prompt, file.filename or "")
        body = image_view(record)
        body["image"] = base64.b64encode(picture.data).decode("ascii")
        return jsonify(body), 201

    @app.post("/question")
    def question():
        given = request_fields()
        text = fields.text(given, "question", max_length=MAX_QUESTION)
        image_id = fields.text(given, "image_id", max_length=100)
        record = service("history").image(image_id)
        answer = service("answerer").answer(stored_pixels(record), text)
        entry = {"question": text, "answer": answer, "asked_at": now()}
        record = service("history").add_question(image_id, entry)
        return jsonify(image_id=image_id, question=text, answer=answer, caption=record["caption"],
                       history=record["questions"])

    @app.get("/history")
    def history():
        limit = fields.number(request.args, "limit", low=1, high=PAGE_LIMIT, default=50)
        offset = fields.number(request.args, "offset", low=0, high=10**9, default=0)
        mine, total = service("history").list("images", owner(), limit, offset)
        made, total_made = service("history").list("generations", owner(), limit, offset)
        return jsonify(images=[image_view(record) for record in mine], total_images=total,
                       generations=[generation_view(record) for record in made], total_generations=total_made,
                       limit=limit, offset=offset)

    @app.get("/images/<image_id>")
    def image(image_id):
        return jsonify(image_view(service("history").image(image_id)))

    @app.post("/generate")
    def generate():
        given = request_fields()
        description = fields.text(given, "description", max_length=MAX_DESCRIPTION)
        parameters = generation_parameters(given)
        image = service("hf_client").generate(description, parameters)
        record = keep_generation(image, description, parameters)
        body = generation_view(record)
        body["image"] = base64.b64encode(image.data).decode("ascii")
        return jsonify(body), 201

    @app.get("/generations/<generation_id>")
    def generation(generation_id):
        return jsonify(generation_view(service("history").generation(generation_id)))

    @app.get("/generated/<name>")
    def generated_file(name):
        return send_from_directory(current_app.config["GENERATED_FOLDER"], name)

    @app.get("/uploads/<name>")
    def uploaded_file(name):
        return send_from_directory(current_app.config["UPLOAD_FOLDER"], name)

    @app.get("/healthz")
    def healthz():
        models = {role: model_status(service(role)) for role in ("captioner", "answerer")}
        ready = all(model["ready"] for model in models.values())
        body = {"status": "ok" if ready else "unavailable", "models": models,
                "generation_model": current_app.config["SD_MODEL"], "keys": service("hf_client").status(),
                "demo": current_app.config["DEMO"]}
        if current_app.config["DEMO"]:
            body["notice"] = DEMO_NOTICE
        return jsonify(body), 200 if ready else 503


DEMO_NOTICE = "demo models with random weights: captions and answers are meaningless"


def model_status(model) -> dict:
    """What /healthz says of one model."""
    status = {"name": getattr(model, "name", type(model).__name__), "ready": getattr(model, "ready", True)}
    if not status["ready"]:
        status["error"] = model.message
    return status


def __getattr__(name: str):
    # PEP 562: `gunicorn app:app` asks for app.app; build it, models loaded, on that first use.
    if name == "app":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    server = __getattr__("app")
    server.run(host=server.config["HOST"], port=server.config["PORT"], threaded=True)
