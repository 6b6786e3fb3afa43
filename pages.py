"""The browser page, and the plain form posts that make it work without JavaScript."""

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from werkzeug.exceptions import RequestEntityTooLarge

import actions
import field_checks
import images
import settings
from actions import service
from api import client_gone
from errors import AppError
from guards import check_csrf, csrf_token

bp = Blueprint("pages", __name__)

GALLERY_PAGE = 12


@bp.app_context_processor
def page_globals():
    return {"csrf_token": csrf_token, "account": signed_in_account(), "demo": current_app.config["DEMO"],
            "demo_notice": settings.DEMO_NOTICE, "missing": missing_models()}


def signed_in_account():
    """The signed-in account for the page's header (AUTH on), else None."""
    if not current_app.config["AUTH_ON"]:
        return None
    from flask_login import current_user  # Flask-Login is set up only with AUTH on

    return current_user if current_user.is_authenticated else None


def missing_models() -> dict[str, str]:
    """The models that could not be loaded, by role, with what to do about each."""
    return {role: service(role).message for role in ("captioner", "answerer")
            if not getattr(service(role), "ready", True)}


@bp.errorhandler(AppError)
def form_error(error: AppError):
    # A plain form post shows the message on a page, not as JSON.
    return render_template("error.html", message=error.message), error.status, error.headers


@bp.errorhandler(RequestEntityTooLarge)
def form_too_large(error: RequestEntityTooLarge):
    return form_error(images.too_many_bytes(current_app.config["MAX_IMAGE_BYTES"]))


@bp.get("/")
def index():
    shown = field_checks.number(request.args, "shown", low=GALLERY_PAGE, high=1000, default=GALLERY_PAGE)
    drawing = service("hf_client")
    return render_template("index.html", history=actions.history_page(shown, 0), page_size=GALLERY_PAGE,
                           model=drawing.model, limits=drawing.limits)


@bp.get("/page/images/<image_id>")
def image_page(image_id):
    return render_template("image.html", image=actions.image_view(actions.readable("images", image_id)))


@bp.post("/page/upload")
def upload_form():
    check_csrf()
    record, _ = actions.upload(request.files, request.form, client_gone)
    return redirect(url_for("pages.image_page", image_id=record["image_id"]), 303)


@bp.post("/page/question")
def question_form():
    check_csrf()
    record, _ = actions.ask(request.form, client_gone)
    return redirect(url_for("pages.image_page", image_id=record["image_id"], _anchor="latest"), 303)


@bp.post("/page/generate")
def generate_form():
    check_csrf()
    made, _ = actions.generate(request.form)
    return render_template("generated.html", generation=actions.generation_view(made[0][0])), 201
