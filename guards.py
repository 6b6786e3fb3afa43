"""The web's guards, run before any view: the head's size, trusted host names, same-origin changes,
authentication (with AUTH on), and the security headers of every response.

Authentication, with AUTH on (settings.auth_on): a request is signed in by the session cookie that
POST /login gave (Flask-Login keeps the sign-in session's token in Flask's signed cookie; accounts.py
keeps its hash, so that sign-out ends it on the server), or by an API key in `Authorization: Bearer`
or `X-API-Key` (Flask-Login's request_loader). Every endpoint needs one except PUBLIC's. With AUTH
off, nothing here asks who the caller is, and the history is a cookie session's, as before accounts.
"""

import logging
import math
import socket
import threading
import time
from typing import Callable
from urllib.parse import urlsplit

from flask import Flask, current_app, jsonify, redirect, request, url_for
from flask_limiter import Limiter
from flask_login import LoginManager, current_user
from flask_wtf.csrf import ValidationError, generate_csrf, validate_csrf
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

import settings
from accounts import Accounts
from errors import InvalidInput, RateLimited

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS_TOO_LARGE = (f"the request's headers are too large ({settings.MAX_HEADER_BYTES // 1024} KB at most), often "
                     "because of the cookies that other apps on this host name left in the browser: delete those "
                     "cookies (or open this app at 127.0.0.1 rather than localhost), or send fewer or smaller headers")
URI_TOO_LONG = (f"the address is longer than {settings.MAX_HEADER_BYTES // 1024} KB: shorten its query, or send "
                "the data in a request's body")
WILDCARD_HOSTS = {"", "0.0.0.0", "::"}
PUBLIC = {"static", "api.healthz", "account.login", "account.login_page"}  # open without an account
REALM = 'Bearer realm="image-assistant"'
SIGN_IN_FAILURES = "5 per 15 minutes"  # OWASP ASVS V2.2.1: throttle guessing, per account and per address


def register_guards(app: Flask) -> None:
    """Bound the request's head; answer only trusted host names; refuse cross-site changes; with AUTH on, ask
    for an account; send the security headers."""
    app.before_request(head_within_limits)
    app.before_request(trusted_hosts_only)
    app.before_request(same_origin_changes_only)
    app.after_request(security_headers)
    if not app.config["AUTH_ON"] and not settings.is_loopback(app.config["HOST"]):
        log.warning("AUTH=off with HOST=%s: anyone who can reach this server may use it, and spend its Hugging Face "
                    "credits; set AUTH=auto or on", app.config["HOST"] or "''")


def head_within_limits():
    # One boundary, the app's: serve.py's nginx and gunicorn pass on more than this, so that past it the answer
    # is this JSON that says what to do, not their bare 400 or HTML page (werkzeug passes on up to 100 fields).
    limit = settings.MAX_HEADER_BYTES
    if sum(len(name) + len(value) + 4 for name, value in request.headers.items()) > limit:
        return error_response(431, "headers_too_large", HEADERS_TOO_LARGE)
    if len(request.environ.get("RAW_URI") or request.full_path) > limit:
        return error_response(414, "uri_too_long", URI_TOO_LONG)
    return None


def trusted_hosts_only():
    # A DNS rebinding page reaches this server under its own name: refuse every name not configured.
    if not host_is_trusted(request.host, current_app.config["TRUSTED_HOST_NAMES"]):
        return error_response(400, "untrusted_host", "this server does not answer to that host name: use one in "
                                                     "TRUSTED_HOSTS, or add this one there")
    return None


def same_origin_changes_only():
    # Browsers send Origin with every cross-site POST or DELETE; curl and scripts send none. The
    # Host it is compared with is a trusted one (checked above).
    origin = request.headers.get("Origin")
    changes = request.method not in ("GET", "HEAD", "OPTIONS")
    if changes and origin is not None and site(origin) != site(request.host_url):
        return error_response(403, "cross_origin",
                              "this request came from another site: use the page or the API directly")
    return None


def security_headers(response):
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def csrf_token() -> str:
    """The session's token for the page's form posts (Flask-WTF's, signed with SECRET_KEY; new at each sign-in)."""
    return generate_csrf()


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")  # what an HTML form sends


def check_form_csrf() -> None:
    """check_csrf for a request a browser's form could have sent (a cross-site form needs no Origin check to fail)."""
    if request.mimetype in FORM_TYPES:
        check_csrf()


def check_csrf() -> None:
    """Refuse a form post that does not carry its session's token (scripts posting JSON are guarded by Origin)."""
    try:
        validate_csrf(request.form.get("csrf_token", ""))
    except ValidationError:
        raise InvalidInput("the form has expired or did not come from this site: reload the page and try again",
                           code="csrf_failed") from None


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


class Account:
    """The signed-in account, as Flask-Login's current_user: the account's public fields, and how it came.

    token is the sign-in session's (its id for Flask-Login, kept in the cookie), None for an API key.
    """

    is_authenticated = True
    is_active = True
    is_anonymous = False

    def __init__(self, user: dict, token: str | None = None):
        self.user_id, self.name, self.role = user["user_id"], user["name"], user["role"]
        self.token = token

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def get_id(self) -> str | None:
        return self.token


def register_authentication(app: Flask) -> None:
    """With AUTH on: Flask-Login over accounts.py (sessions by their token, API keys by request_loader; 401 without
    either), and Flask-Limiter's limits (RATE_LIMIT, and failed sign-ins). After the routes are registered."""
    # One count per account (or address) across every route: application limits, not Flask-Limiter's per-route
    # default ones. Retry-After goes on the 429 only (too_many), not on every answer.
    Limiter(rate_key, app=app, application_limits=[app.config["RATE_LIMIT"]],
            storage_uri=app.config["RATE_LIMIT_STORAGE"], on_breach=too_many,
            application_limits_exempt_when=lambda: request.endpoint == "static")
    app.extensions["sign_in_throttle"] = SignInThrottle(app.config["RATE_LIMIT_STORAGE"])
    manager = LoginManager(app)
    manager.session_protection = None  # the server ends sessions itself (accounts.end_session); no IP pinning

    @manager.user_loader
    def signed_in(token: str):
        user = identity().user_for_session(token)
        return Account(user, token) if user else None

    @manager.request_loader
    def by_api_key(incoming):
        key = api_key(incoming)
        user = identity().user_for_key(key) if key else None
        return Account(user) if user else None

    @manager.unauthorized_handler
    def unauthorized():
        return ask_for_an_account()

    @app.before_request
    def account_required():
        if request.endpoint in PUBLIC or current_user.is_authenticated:
            return None
        return ask_for_an_account()


def rate_key() -> str:
    """Whose requests RATE_LIMIT counts together: a signed-in account's, else one client address's."""
    if current_user.is_authenticated:
        return "account:" + current_user.user_id
    return "address:" + (request.remote_addr or "")


def too_many(limit) -> object:
    """RATE_LIMIT's refusal: 429 rate_limited with Retry-After."""
    wait = retry_after(limit)
    return error_response(429, "rate_limited", f"too many requests ({limit.limit}): wait {wait} s and try again, "
                                               "or send fewer", {"Retry-After": str(wait)})


def retry_after(limit) -> int:
    """Whole seconds until a breached limit's window resets, at least 1."""
    return max(1, math.ceil(limit.reset_at - time.time()))


class SignInThrottle:
    """At most SIGN_IN_FAILURES failed sign-ins per account name and per client address in the window (OWASP ASVS
    V2.2.1). The check, the password's check and the count of a failure happen under one lock, so that guesses
    sent at the same time are counted as they come, not all let through before the first is counted; a right
    password is refused too while the window is spent, and the answer is the same whether the name exists."""

    def __init__(self, storage_uri: str):
        self.limit = parse(SIGN_IN_FAILURES)
        self.window = MovingWindowRateLimiter(storage_from_string(storage_uri))
        self._lock = threading.Lock()

    def attempt(self, name: str, address: str, check: Callable[[], object]):
        """check()'s result (None for a failure), or RateLimited before it is run when either count is spent."""
        keys = ("sign-in-name", name.strip().lower()[:200]), ("sign-in-address", address)
        with self._lock:
            spent = [key for key in keys if not self.window.test(self.limit, *key)]
            if spent:
                reset = max(self.window.get_window_stats(self.limit, *key).reset_time for key in spent)
                wait = max(1, math.ceil(reset - time.time()))
                raise RateLimited(f"too many failed sign-ins for this name or from this address: wait {wait} s and "
                                  "try again", headers={"Retry-After": str(wait)})
            result = check()
            if result is None:
                for key in keys:
                    self.window.hit(self.limit, *key)
            return result


def api_key(incoming) -> str | None:
    """The API key a request carries: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    scheme, _, value = incoming.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return incoming.headers.get("X-API-Key", "").strip() or None


def ask_for_an_account():
    """A page asked for in a browser goes to the sign-in form; anything else is refused with 401."""
    if request.method == "GET" and (request.blueprint == "pages" or request.endpoint == "account.keys_page"):
        return redirect(url_for("account.login_page", next=request.full_path.rstrip("?")))
    return error_response(401, "unauthorized", "sign in first: POST /login with your name and password, or send an "
                          "API key as 'Authorization: Bearer <key>' (make one with `flask --app app keys create NAME`)",
                          {"WWW-Authenticate": REALM})


# OpenAI's error types by status, for /v1 (the SDKs pick their exception class by the status itself).
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 405: "invalid_request_error", 409: "invalid_request_error",
                413: "invalid_request_error", 414: "invalid_request_error", 431: "invalid_request_error",
                429: "rate_limit_error"}


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    """The one JSON shape of every error: {"error": what went wrong and what to do, "code": a stable code};
    on /v1, OpenAI's {"error": {"message", "type", "param", "code"}} with the same status, message and code."""
    if request.path == "/v1" or request.path.startswith("/v1/"):
        response = jsonify(error={"message": message, "type": OPENAI_TYPES.get(status, "server_error"),
                                  "param": error_param(code), "code": code})
    else:
        response = jsonify(error=message, code=code)
    response.status_code = status
    for name, value in (headers or {}).items():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def error_param(code: str) -> str | None:
    """The request field an error code names (missing_prompt, invalid_size, prompt_too_long), else None."""
    if code == "model_not_found":
        return "model"
    for prefix in ("missing_", "invalid_"):
        if code.startswith(prefix):
            return code[len(prefix):]
    return code[: -len("_too_long")] if code.endswith("_too_long") else None


def identity() -> Accounts:
    """The app's accounts (over its history's store)."""
    return current_app.extensions["accounts"]
