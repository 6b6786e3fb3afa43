"""The image assistant: create_app() wires settings, services, routes and JSON errors.

`from app import create_app` loads nothing. `python app.py` and `gunicorn app:app` load both
models before the first request: `app` is a lazy module attribute (PEP 562) built on first use.
"""

import logging
import os
import secrets
import socket
import tempfile
import threading
from urllib.parse import urlsplit

import click
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

import images
import settings
import storage
from errors import AppError, SettingError
from hf_client import HFClient
from keys import read_keys
import accounts_cli
import history_cli
from history import open_store
from model_service import ModelService

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

HTTP_ERRORS = {
    400: ("bad_request", "the request could not be read: check its fields and body"),
    404: ("not_found", "there is nothing at this address: check the URL"),
    405: ("method_not_allowed", "this address does not take that method: see the README for the API"),
    414: ("uri_too_long", f"the address is longer than {settings.MAX_HEADER_BYTES // 1024} KB: shorten its query, "
                          "or send the data in a request's body"),
    431: ("headers_too_large", f"the request's headers are too large ({settings.MAX_HEADER_BYTES // 1024} KB at "
                               "most), often because of the cookies that other apps on this host name left in the "
                               "browser: delete those cookies (or open this app at 127.0.0.1 rather than localhost), "
                               "or send fewer or smaller headers"),
}


def create_app(config=None, *, captioner=None, answerer=None, hf_client=None, services=True):
    """Build the app: defaults, then the environment, then config; real models only if none given.

    services=False builds it for the flask command's tools (`flask --app app history copy ...`): the
    settings, routes and commands, but no model, client or history.
    """
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(settings.DEFAULTS)
    app.config.from_mapping(settings.from_environment(os.environ))
    app.config.from_mapping(config or {})
    app.config["ROOT"] = app.root_path  # relative paths in the settings are taken from here
    for folder in ("UPLOAD_FOLDER", "GENERATED_FOLDER", "HISTORY_FILE"):
        app.config[folder] = os.path.join(app.root_path, app.config[folder])
    if app.config["HF_API_KEYS_FILE"]:
        app.config["HF_API_KEYS_FILE"] = os.path.join(app.root_path, os.path.expanduser(app.config["HF_API_KEYS_FILE"]))
    # Room for the multipart envelope around a file of MAX_IMAGE_BYTES.
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_IMAGE_BYTES"] + 64 * 1024
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["TRUSTED_HOST_NAMES"] = trusted_hosts(app.config)
    # Checked by register_security: werkzeug's own check of TRUSTED_HOSTS cannot match an IPv6 name (::1).
    app.config["TRUSTED_HOSTS"] = None
    app.secret_key = app.config["SECRET_KEY"] or instance_secret_key(app.instance_path)
    app.json.sort_keys = False
    register_errors(app)
    register_security(app)
    register_routes(app)
    app.cli.add_command(history_cli.history)
    app.cli.add_command(accounts_cli.users)
    app.cli.add_command(accounts_cli.keys)
    if services:
        start_services(app, captioner, answerer, hf_client)
    return app


def start_services(app: Flask, captioner, answerer, hf_client) -> None:
    """The history, the inference client, the models; and the sweep of what a crash left.

    The history and the client come first: a setting that stops the start stops it before minutes of
    loading models.
    """
    history = open_store(app.config["DATABASE_URL"] or app.config["HISTORY_FILE"], app.root_path)
    app.extensions["history"] = history
    app.extensions["hf_client"] = hf_client or build_hf_client(app.config, history.key_states())
    if captioner is None or answerer is None:
        loaded_captioner, loaded_answerer = load_models(app.config, captioner is None, answerer is None)
        captioner = captioner or loaded_captioner
        answerer = answerer or loaded_answerer
    app.extensions["captioner"] = captioner
    app.extensions["answerer"] = answerer
    app.extensions["models"] = ModelService(
        captioner, answerer, cache_bytes=app.config["CACHE_MAX_MB"] << 20, max_batch=app.config["MAX_BATCH"],
        batch_wait=app.config["BATCH_WAIT_MS"] / 1000, max_queue=app.config["MAX_QUEUE"],
        max_background=app.config["MAX_BACKGROUND"], timeout=app.config["MODEL_TIMEOUT"])
    app.extensions["decoding"] = threading.BoundedSemaphore(app.config["MAX_DECODES"])
    # An empty history keeps every stored file: it may be a new store the old one was not copied to yet.
    storage.sweep(app.config["UPLOAD_FOLDER"], [app.config["UPLOAD_FOLDER"], app.config["GENERATED_FOLDER"]],
                  history.filenames() or None)


def load_models(config, need_captioner: bool, need_answerer: bool):
    """Load the real BLIP models named by the settings (torch is imported only here).

    A setting that names a local folder loads it; a hub id is downloaded, or, when the hub does not
    answer within seconds, read from the local cache only (HF_HUB_OFFLINE is not set: it would
    switch generation off too).
    """
    import huggingface_hub
    import models

    threads = models.share_cores(config["WEB_CONCURRENCY"])
    log.info("%d worker(s) on %d cores: %d torch thread(s) in this one", config["WEB_CONCURRENCY"],
             os.cpu_count() or 1, threads)
    wanted = [(kind, setting) for kind, setting, need in ((models.Captioner, "CAPTION_MODEL", need_captioner),
                                                          (models.Answerer, "VQA_MODEL", need_answerer)) if need]
    sources = {setting: settings.model_source(config[setting], config["ROOT"]) for _, setting in wanted}
    online = all(local for _, local in sources.values()) or models.hub_reachable(huggingface_hub.constants.ENDPOINT)
    if not online:
        log.warning("the Hugging Face hub cannot be reached: models are read from the local cache only")
    loaded = {}
    for kind, setting in wanted:
        prefix = setting.split("_")[0]  # CAPTION or VQA
        generation = {name: config[f"{prefix}_{name.upper()}"] for name in ("num_beams", "min_length", "max_length")}
        source, local = sources[setting]
        loaded[setting] = models.in_passing_thread(lambda: models.load(
            kind, source, setting, config["DEVICE"], generation, config["FAST_MODE"], local=local, hub_online=online,
            few_row_linear=config["FEW_ROW_LINEAR"], max_batch=config["MAX_BATCH"]))
    return loaded.get("CAPTION_MODEL"), loaded.get("VQA_MODEL")


def build_hf_client(config, key_states=None):
    """The inference client, keys from HF_API_KEYS_FILE (else HF_API_KEYS); it asks the hub in the background.

    key_states: where replicas share the keys' states (the history's database), or None.
    """
    keys = read_keys(config["HF_API_KEYS"], ",")
    if config["HF_API_KEYS_FILE"]:
        try:
            with open(config["HF_API_KEYS_FILE"], encoding="utf-8") as file:
                keys = read_keys(file.read())
        except OSError as error:
            log.error("HF_API_KEYS_FILE %s cannot be read (%s): image generation has no keys",
                      config["HF_API_KEYS_FILE"], error.strerror)
            keys = []
    client = HFClient(keys, config["SD_MODEL"], provider=config["HF_PROVIDER"], router_url=config["HF_ROUTER_URL"],
                      timeout=config["HF_TIMEOUT"], deadline=config["HF_DEADLINE"], max_tries=config["HF_MAX_TRIES"],
                      exhausted_cooldown=config["HF_EXHAUSTED_COOLDOWN"], key_states=key_states)
    if keys:  # which providers serve SD_MODEL: logged, and shown by /healthz; without a key nothing can be drawn
        client.discover_in_background()
    else:
        log.info("no Hugging Face API key (HF_API_KEYS or HF_API_KEYS_FILE): image generation is off")
    return client


WILDCARD_HOSTS = {"", "0.0.0.0", "::"}


def trusted_hosts(config) -> list[str]:
    """The host names this app answers to: TRUSTED_HOSTS, else the local names and HOST."""
    given = config["TRUSTED_HOSTS"] or ""
    if isinstance(given, str):
        given = [name.strip().lower().strip("[]") for name in given.split(",") if name.strip()]
    if given:
        return list(given)
    names = ["localhost", "127.0.0.1", "::1"]
    host = config["HOST"].strip("[]")
    if host in WILDCARD_HOSTS:
        names.append(socket.gethostname().lower())
        log.warning("HOST=%s listens on every address, but only %s are trusted host names: set TRUSTED_HOSTS to "
                    "the names clients use to reach this server", config["HOST"] or "''", ", ".join(names))
    elif host.lower() not in names:
        names.append(host.lower())
    return names


def host_is_trusted(host: str | None, trusted: list[str]) -> bool:
    """Whether a Host header (name and port) names one of the trusted hosts (".example.org": any below it)."""
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return False
    return bool(host) and name is not None and any(
        name == ref or (ref.startswith(".") and name.endswith(ref)) for ref in trusted)


def site(url: str) -> tuple | None:
    """A URL's scheme, host name and port, as browsers compare origins (host names in any case)."""
    try:
        parts = urlsplit(url)
        return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None


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
    storage.check_readable(path, "the session key file", instead="set SECRET_KEY")
    with open(path, encoding="ascii") as file:
        return file.read().strip()


def register_errors(app: Flask) -> None:
    """Every error becomes {"error": ..., "code": ...} with its status."""

    @app.errorhandler(AppError)
    def app_error(error: AppError):
        return error_response(error.status, error.code, error.message, error.headers)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(error: RequestEntityTooLarge):
        return app_error(images.too_many_bytes(app.config["MAX_IMAGE_BYTES"]))

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


def register_security(app: Flask) -> None:
    """Bound the request's head; answer only trusted host names; refuse cross-site posts; send the security headers."""

    @app.before_request
    def head_within_limits():
        # One boundary, the app's: serve.py's nginx and gunicorn pass on more than this, so that past it the answer
        # is this JSON that says what to do, not their bare 400 or HTML page (werkzeug passes on up to 100 fields).
        limit = settings.MAX_HEADER_BYTES
        if sum(len(name) + len(value) + 4 for name, value in request.headers.items()) > limit:
            return error_response(431, *HTTP_ERRORS[431])
        if len(request.environ.get("RAW_URI") or request.full_path) > limit:
            return error_response(414, *HTTP_ERRORS[414])
        return None

    @app.before_request
    def trusted_hosts_only():
        # A DNS rebinding page reaches this server under its own name: refuse every name not configured.
        if not host_is_trusted(request.host, app.config["TRUSTED_HOST_NAMES"]):
            return error_response(400, "untrusted_host",
                                  "this server does not answer to that host name: use one in TRUSTED_HOSTS, "
                                  "or add this one there")
        return None

    @app.before_request
    def same_origin_changes_only():
        # Browsers send Origin with every cross-site POST or DELETE; curl and scripts send none. The
        # Host it is compared with is a trusted one (checked above).
        origin = request.headers.get("Origin")
        changes = request.method not in ("GET", "HEAD", "OPTIONS")
        if changes and origin is not None and site(origin) != site(request.host_url):
            return error_response(403, "cross_origin",
                                  "this request came from another site: use the page or the API directly")
        return None

    @app.after_request
    def security_headers(response):
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["Referrer-Policy"] = "same-origin"
        return response


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    """The one JSON shape of every error."""
    response = jsonify(error=message, code=code)
    response.status_code = status
    for name, value in (headers or {}).items():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def register_routes(app: Flask) -> None:
    """The JSON API and the page."""
    import api
    import pages

    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)


def __getattr__(name: str):
    # PEP 562: `gunicorn app:app` asks for app.app; build it, models loaded, on that first use.
    if name == "app":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            globals()["app"] = create_app(services=serving())
        except SettingError as error:
            log.error("cannot start: %s", error)
            raise SystemExit(error.exit_status) from None
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def serving() -> bool:
    """Whether this process serves requests: not when the flask command builds the app for a tool.

    The flask command finds `app` before it runs any command; only `flask run` serves.
    """
    command = click.get_current_context(silent=True)
    return command is None or command.command.name == "run"


if __name__ == "__main__":
    server = __getattr__("app")
    server.run(host=server.config["HOST"], port=server.config["PORT"], threaded=True)
