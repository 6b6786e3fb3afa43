"""/jobs: batch captioning of many files or a ZIP. Each view reads the request, calls one job action, shapes the
answer."""

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

import field_checks
import job_actions
from api import PAGE_LIMIT
from guards import error_response
from job_files import too_many_bytes, too_many_files

bp = Blueprint("jobs", __name__, url_prefix="/jobs")

ITEMS_LIMIT = 1000


@bp.before_request
def room_for_a_job():
    # A job's body holds many files: JOB_MAX_MB of them (and a multipart envelope each), not one upload's bytes.
    config = current_app.config
    if request.method == "POST":
        request.max_content_length = (config["JOB_MAX_MB"] << 20) + config["JOB_MAX_FILES"] * 1024 + (1 << 20)
        request.max_form_parts = 2 * config["JOB_MAX_FILES"] + 16


@bp.errorhandler(RequestEntityTooLarge)
def job_too_large(error):
    # werkzeug says the same for a body over max_content_length and for more parts than max_form_parts.
    config = current_app.config
    over = (request.content_length or 0) > request.max_content_length
    refusal = too_many_bytes(config["JOB_MAX_MB"] << 20) if over else too_many_files(
        f"more than {config['JOB_MAX_FILES']}", config["JOB_MAX_FILES"])
    return error_response(refusal.status, refusal.code, refusal.message)


@bp.post("")
def start():
    job = job_actions.start(request.files, request.form)
    return jsonify(job_actions.view(job)), 202, {"Location": job_actions.view(job)["status_url"]}


@bp.get("")
def mine():
    limit, offset = page(PAGE_LIMIT, 50)
    return jsonify(job_actions.mine(limit, offset))


@bp.get("/<job_id>")
def job(job_id):
    return jsonify(job_actions.view(job_actions.readable(job_id)))


@bp.get("/<job_id>/items")
def items(job_id):
    limit, offset = page(ITEMS_LIMIT, 100)
    return jsonify(job_actions.items(job_id, limit, offset))


@bp.delete("/<job_id>")
def cancel_or_delete(job_id):
    return jsonify(job_actions.cancel_or_delete(job_id))


@bp.post("/<job_id>/cancel")
def cancel(job_id):
    return jsonify(job_actions.cancel(job_id))


@bp.get("/<job_id>/export")
def export(job_id):
    content, content_type, name = job_actions.export(job_id, request.args.get("format"))
    return Response(content, content_type=content_type,
                    headers={"Content-Disposition": f'attachment; filename="{job_id}-{name}"'})


def page(most: int, default: int) -> tuple[int, int]:
    """?limit and ?offset, checked."""
    return (field_checks.number(request.args, "limit", low=1, high=most, default=default),
            field_checks.number(request.args, "offset", low=0, high=10**9, default=0))
