"""Sign-in, sign-out and API keys (a blueprint, registered with AUTH on): /login, /logout, /keys.

Each view reads the request, calls accounts.py through guards.identity(), and shapes the answer; a
form post from the page gets a page or a redirect, a script's JSON gets JSON.
"""

from urllib.parse import urlsplit

from flask import Blueprint, current_app, jsonify, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user

import field_checks
from accounts import MAX_PASSWORD, public
from api import request_fields
from errors import NotFound, Unauthorized
from guards import REALM, Account, check_csrf, check_form_csrf, identity

bp = Blueprint("account", __name__)

WRONG = "the name or the password is wrong: check both (names are not case-sensitive)"


@bp.get("/login")
def login_page():
    return render_template("login.html", next=safe_next(request.args.get("next")), no_account=not identity().users())


@bp.post("/login")
def login():
    fields = request_fields()
    if not request.is_json:
        check_csrf()  # a form post from another site must not sign this browser in (login CSRF)
    name = field_checks.text(fields, "username", max_length=200)
    password = field_checks.text(fields, "password", max_length=MAX_PASSWORD * 4, strip=False)
    throttle = current_app.extensions["sign_in_throttle"]
    user = throttle.attempt(name, request.remote_addr or "", lambda: identity().authenticate(name, password))
    if user is None:
        if not request.is_json:
            return render_template("login.html", error=WRONG, next=safe_next(fields.get("next"))), 401
        raise Unauthorized(WRONG, code="invalid_credentials", headers={"WWW-Authenticate": REALM})
    session.clear()  # a new session at every sign-in: nothing of the one before carries over (no fixation)
    login_user(Account(user, identity().start_session(user["user_id"])))
    if not request.is_json:
        return redirect(safe_next(fields.get("next")) or url_for("pages.index"))
    return jsonify(user=public(user))


@bp.post("/logout")
def logout():
    check_form_csrf()
    if current_user.token:
        identity().end_session(current_user.token)  # ended on the server: a saved copy of the cookie no longer works
    logout_user()
    session.clear()
    if not request.is_json and request.form:
        return redirect(url_for("account.login_page"))
    return "", 204


@bp.get("/keys")
def list_keys():
    return jsonify(keys=identity().keys(current_user.user_id))


@bp.post("/keys")
def create_key():
    check_form_csrf()
    label = field_checks.text(request_fields(), "label", max_length=100, required=False) or ""
    record, key = identity().create_key(current_user.user_id, label)
    return jsonify(key_id=record["key_id"], key=key, label=record["label"], created_at=record["created_at"]), 201


@bp.delete("/keys/<key_id>")
def revoke_key(key_id):
    if not identity().revoke_key(key_id, current_user.user_id):
        raise NotFound(f"you have no API key with id '{key_id}': list yours with GET /keys", code="key_not_found")
    return "", 204


@bp.get("/page/keys")
def keys_page():
    return render_template("keys.html", keys=identity().keys(current_user.user_id))


@bp.post("/page/keys")
def create_key_form():
    check_csrf()
    label = field_checks.text(request.form, "label", max_length=100, required=False) or ""
    record, key = identity().create_key(current_user.user_id, label)
    return render_template("keys.html", keys=identity().keys(current_user.user_id), new=record, new_key=key), 201


@bp.post("/page/keys/<key_id>/revoke")
def revoke_key_form(key_id):
    check_csrf()
    revoke_key(key_id)
    return redirect(url_for("account.keys_page"))


def safe_next(target: str | None) -> str | None:
    """Where to go after signing in: a path on this site only (an open redirect elsewhere is refused)."""
    if not isinstance(target, str) or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else None
