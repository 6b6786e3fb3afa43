"""The image assistant: create_app() wires settings, services, routes and JSON errors.

`from app import create_app` loads nothing. `python app.py` and `gunicorn app:app` load both
models before the first request: `app` is a lazy module attribute (PEP 562) built on first use.
"""

import logging
import os
import secrets
import tempfile
import threading
import time

import click
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

import guards
import images
import jobs
import settings
import storage
from accounts import Accounts
from guards import error_response
from errors import AppError, SettingError
from hf_client import HFClient
from keys import read_keys
import accounts_cli
import captions_cli
import history_cli
from history import open_store
from model_service import ModelService

log = logging.getLogger(__name__)

HTTP_ERRORS = {
    400: ("bad_request", "the request could not be read: check its fields and body"),
    404: ("not_found", "there is nothing at this address: check the URL"),
    405: ("method_not_allowed", "this address does not take that method: see the README for the API"),
    414: ("uri_too_long", guards.URI_TOO_LONG),
    431: ("headers_too_large", guards.HEADERS_TOO_LARGE),
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
    app.config["JOBS_FOLDER"] = app.config["JOBS_FOLDER"] or os.path.join(app.config["UPLOAD_FOLDER"], "jobs")
    for folder in ("UPLOAD_FOLDER", "GENERATED_FOLDER", "HISTORY_FILE", "JOBS_FOLDER"):
        app.config[folder] = os.path.join(app.root_path, app.config[folder])
    if app.config["HF_API_KEYS_FILE"]:
        app.config["HF_API_KEYS_FILE"] = os.path.join(app.root_path, os.path.expanduser(app.config["HF_API_KEYS_FILE"]))
    # Room for the multipart envelope around a file of MAX_IMAGE_BYTES.
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_IMAGE_BYTES"] + 64 * 1024
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["WTF_CSRF_TIME_LIMIT"] = None  # a page's token lasts as long as its session, as before Flask-WTF
    app.config["TRUSTED_HOST_NAMES"] = guards.trusted_hosts(app.config)
    app.config["AUTH_ON"] = settings.auth_on(app.config)
    app.config["STARTED_AT"] = time.time()  # /v1/models' "created"
    # Checked by guards.trusted_hosts_only: werkzeug's own check of TRUSTED_HOSTS cannot match an IPv6 name (::1).
    app.config["TRUSTED_HOSTS"] = None
    app.secret_key = app.config["SECRET_KEY"] or instance_secret_key(app.instance_path)
    app.json.sort_keys = False
    if app.config["TRUSTED_PROXIES"]:
        # The client's address, for the limits per address, from the X-Forwarded-For of that many proxies
        # (werkzeug's ProxyFix); a client's own X-Forwarded-For is never taken without them.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=app.config["TRUSTED_PROXIES"])
    register_errors(app)
    guards.register_guards(app)
    register_routes(app)
    app.cli.add_command(history_cli.history)
    app.cli.add_command(accounts_cli.users)
    app.cli.add_command(accounts_cli.keys)
    app.cli.add_command(captions_cli.caption)
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
    app.extensions["accounts"] = Accounts(history, session_lifetime=app.permanent_session_lifetime)
    if app.config["AUTH_ON"] and not app.extensions["accounts"].users():
        log.warning("AUTH is on and there is no account yet: create the first with "
                    "`flask --app app users create NAME --admin`, then sign in at /login")
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
    app.extensions["keyed_locks"] = storage.KeyedLocks()  # an image a chat sends at once in several requests
    # An empty history keeps every stored file: it may be a new store the old one was not copied to yet.
    storage.sweep(app.config["UPLOAD_FOLDER"], [app.config["UPLOAD_FOLDER"], app.config["GENERATED_FOLDER"]],
                  history.filenames() or None)
    jobs.sweep_staged(app.config["JOBS_FOLDER"], history)
    app.extensions["job_runner"] = jobs.JobRunner(app)
    if app.config["JOB_WORKER"]:
        app.extensions["job_runner"].start()


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
        if error.response is not None:  # made already, in the JSON shape (guards.too_many: a breached rate limit)
            return error.response
        code, message = HTTP_ERRORS.get(error.code, (None, error.description))
        code = code or (error.name or "error").lower().replace(" ", "_").replace("'", "")
        return error_response(error.code, code, message, dict(error.get_headers()) if error.code == 405 else {})

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal_error",
                              "something went wrong on the server and it was logged: try again, "
                              "and report it if it keeps happening")


def register_routes(app: Flask) -> None:
    """The JSON API and the page."""
    import api
    import pages

    import jobs_api
    import openai_api

    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(openai_api.bp)
    app.register_blueprint(jobs_api.bp)
    if app.config["AUTH_ON"]:
        import account_views

        app.register_blueprint(account_views.bp)
        guards.register_authentication(app)


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
