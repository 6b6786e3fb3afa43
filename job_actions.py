"""What the app does with batch jobs for a caller: start one, show its progress and items, cancel or delete it,
export its captions. The job runner (jobs.py) does the captioning; the stores keep the rows.

Who may see a job is who may see an image: with AUTH on, the account that made it (an admin: any); with
AUTH off, anyone who has its id, while only the session that made it may cancel or delete it.
"""

import os
import time
import uuid

from flask import current_app, url_for

import actions
import exports
import field_checks
import jobs
import storage
from actions import now, owner, service
from errors import InvalidInput, QuotaExceeded
from history import parse_time
from history_jobs import ACTIVE, job_not_found, settled_status
from job_files import Limits, stage_archive, stage_files

MAX_AFFIX = 200  # characters of a prefix or suffix
EXPORT_TYPES = {"txt": ("application/zip", "captions.zip"), "jsonl": ("application/jsonl", exports.JSONL_NAME),
                "csv": ("text/csv; charset=utf-8", exports.CSV_NAME)}


def start(files, form) -> dict:
    """Stage the sent files (many in 'images', or one ZIP in 'archive') as a new job of the caller's; return it.

    Raises InvalidInput (400), ImageTooLarge (413: past JOB_MAX_FILES or JOB_MAX_MB), QuotaExceeded (429: past
    JOBS_PER_ACCOUNT jobs queued or running), and the stores' errors.
    """
    config = current_app.config
    prompt = field_checks.text(form, "prompt", max_length=actions.MAX_PROMPT, required=False)
    prefix, suffix = affix(form, "prefix"), affix(form, "suffix")
    service("models").check_caption(prompt)
    sent, archives = files.getlist("images"), files.getlist("archive")
    if bool(sent) == bool(archives) or len(archives) > 1:
        raise InvalidInput("send the images as files in the multipart field 'images', or one ZIP of them in the "
                           "field 'archive' (not both)", code="missing_images")
    check_room()
    storage.check_writable(config["JOBS_FOLDER"], "JOBS_FOLDER")
    service("history").check_writable()
    job_id = str(uuid.uuid4())
    folder = os.path.join(config["JOBS_FOLDER"], job_id)
    limits = Limits(config["JOB_MAX_FILES"], config["JOB_MAX_MB"] << 20, config["MAX_IMAGE_BYTES"])
    try:
        with storage.faults_told("JOBS_FOLDER", folder):
            staged = (stage_archive(archives[0].stream, folder, limits) if archives
                      else stage_files(sent, folder, limits))
    except BaseException:  # a refused or failed job leaves nothing on disk
        jobs.remove_staged(config["JOBS_FOLDER"], job_id)
        raise
    moment = now()
    settled = settled_status(staged.items)  # every image was over MAX_IMAGE_BYTES: nothing to run
    job = {"job_id": job_id, "owner": owner(), "status": settled or "queued", "prompt": prompt, "prefix": prefix,
           "suffix": suffix, "total": len(staged.items), "skipped": staged.skipped,
           "skipped_count": staged.skipped_count, "created_at": moment,
           "finished_at": moment if settled else None}
    try:
        if not service("history").add_job(job, staged.items, config["JOBS_PER_ACCOUNT"]):
            raise too_many_jobs(config["JOBS_PER_ACCOUNT"])  # others of the caller's came while these files did
    except BaseException:
        jobs.remove_staged(config["JOBS_FOLDER"], job_id)
        raise
    service("job_runner").wake()
    return service("history").job(job_id)


def affix(form, name: str) -> str | None:
    """The prefix or suffix, checked: text of at most MAX_AFFIX characters on one line."""
    value = field_checks.text(form, name, max_length=MAX_AFFIX, required=False)
    problem = value and exports.affix_problem(value)
    if problem:
        raise InvalidInput(f"'{name}' {problem}: send it on one line", code=f"invalid_{name}")
    return value


def check_room() -> None:
    """Refuse a job past the JOBS_PER_ACCOUNT the caller may have queued or running at once (0: no limit), before
    its files are read; add_job counts again as it keeps the job, in the same write."""
    limit = current_app.config["JOBS_PER_ACCOUNT"]
    if limit and service("history").active_jobs(owner()) >= limit:
        raise too_many_jobs(limit)


def too_many_jobs(limit: int) -> QuotaExceeded:
    return QuotaExceeded(f"you have {limit} jobs queued or running, the most at once (JOBS_PER_ACCOUNT): wait for "
                         "one to finish, or cancel one with POST /jobs/<job_id>/cancel", code="too_many_jobs",
                         headers={"Retry-After": "30"})


def readable(job_id: str) -> dict:
    """A job the caller may see (with its counts); another account's is NotFound, as an id that does not exist."""
    job = service("history").job(job_id)
    if not actions.may_read(job):
        raise job_not_found(job_id)
    return job


def view(job: dict, clock=time.time) -> dict:
    """A job as the API shows it: counts, eta_s (seconds left at the rate so far; null until one item is
    finished, and once the job is), and where to read on."""
    finished = job["done"] + job["failed"]
    eta = None
    if job["status"] == "running" and job.get("started_at") and finished:
        elapsed = max(clock() - parse_time(job["started_at"]), 0.001)
        eta = round((job["total"] - finished) * elapsed / finished, 1)
    return {"job_id": job["job_id"], "status": job["status"], "total": job["total"], "done": job["done"],
            "failed": job["failed"], "eta_s": eta, "created_at": job["created_at"],
            "started_at": job.get("started_at"), "finished_at": job.get("finished_at"), "prompt": job.get("prompt"),
            "prefix": job.get("prefix"), "suffix": job.get("suffix"), "skipped": job["skipped"],
            "skipped_count": job.get("skipped_count", len(job["skipped"])),
            "status_url": url_for("jobs.job", job_id=job["job_id"]),
            "items_url": url_for("jobs.items", job_id=job["job_id"])}


def mine(limit: int, offset: int) -> dict:
    """One page of the caller's jobs, newest first."""
    found, total = service("history").jobs(owner(), limit, offset)
    return {"jobs": [view(job) for job in found], "total": total, "limit": limit, "offset": offset}


def items(job_id: str, limit: int, offset: int) -> dict:
    """One page of a job's items, in the order they came."""
    readable(job_id)
    found, total = service("history").job_items(job_id, limit, offset)
    shown = [{"file_name": item["file_name"], "status": item["state"] if item["state"] != "claimed" else "running",
              "caption": item.get("caption"), "error": item.get("error"), "image_id": item.get("image_id")}
             for item in found]
    return {"items": shown, "total": total, "limit": limit, "offset": offset}


def cancel_or_delete(job_id: str) -> dict:
    """DELETE /jobs/<id>: cancel a queued or running job of the caller's (the items finished stay), or delete a
    finished one with its images; {"job": view} after a cancel, {"deleted": job_id, "images": n} after a delete."""
    if active(readable(job_id)):
        return cancelled(job_id)
    config = current_app.config
    with actions.others_hidden(job_not_found(job_id)), storage.files_locked(config["UPLOAD_FOLDER"], exclusive=False):
        _, made = service("history").delete_job(job_id, owner())
        actions.forget_files(made)
    jobs.remove_staged(config["JOBS_FOLDER"], job_id)
    return {"deleted": job_id, "images": len(made)}


def cancel(job_id: str) -> dict:
    """Cancel a queued or running job of the caller's (the items finished stay): {"job": view}. A job that has
    ended is left as it is, never deleted (so a late Cancel cannot delete what it meant to stop)."""
    readable(job_id)
    return cancelled(job_id)


def cancelled(job_id: str) -> dict:
    """Cancel a job the caller may read (cancel_job leaves an ended one as it is): {"job": view}."""
    with actions.others_hidden(job_not_found(job_id)):
        job = service("history").cancel_job(job_id, owner(), now())
    jobs.remove_staged(current_app.config["JOBS_FOLDER"], job_id)  # what waits for an ended job is not needed
    return {"job": view(job)}


def export(job_id: str, format_: str | None) -> tuple[bytes, str, str]:
    """A job's captions as a training set: (content, content type, file name to download as)."""
    if format_ not in exports.FORMATS:
        raise InvalidInput("'format' must be txt (a ZIP of .txt files), jsonl (metadata.jsonl) or csv",
                           code="invalid_format")
    job = readable(job_id)
    done, _ = service("history").job_items(job_id, job["total"], 0, state="done")
    rows = [(item["file_name"], item["caption"]) for item in done]
    content_type, name = EXPORT_TYPES[format_]
    if format_ == "txt":
        return exports.txt_archive(rows), content_type, name
    text = exports.jsonl_text(rows) if format_ == "jsonl" else exports.csv_text(rows)
    return text.encode("utf-8"), content_type, name


def active(job: dict) -> bool:
    """Whether a job is queued or running."""
    return job["status"] in ACTIVE
