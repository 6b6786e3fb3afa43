"""The assistant's actions: upload, ask, generate, and the history they keep for a session.

Each action validates, calls one model or client, then stores the file and its record together:
neither stays on disk without the other. The JSON API and the page both call these; they pass in
how to tell that the caller has gone (gave_up), which only the web layer knows.
"""

import hashlib
import io
import math
import os
import time
import uuid
from contextlib import contextmanager
from typing import Callable

from flask import current_app, session, url_for
from PIL import Image

import field_checks
import images
import jobs
import storage
from errors import AppError, InvalidInput, NotFound, NotOwner, QuotaExceeded
from history import iso_time, not_found, parse_time

MAX_QUESTION = 500
MAX_PROMPT = 200
MAX_DESCRIPTION = 1000
MAX_IMAGES = 4
DAY = 24 * 3600.0  # seconds in GENERATIONS_PER_DAY's rolling window


def service(name: str):
    """A service the app was built with (captioner, answerer, models, history, hf_client)."""
    return current_app.extensions[name]


def now() -> str:
    """The current UTC time, ISO 8601."""
    return iso_time(time.time())


def owner() -> str:
    """Whose records the caller's are: with AUTH on, the signed-in account's id; else the caller's session id
    (a new session gets one, kept in its signed cookie)."""
    if current_app.config["AUTH_ON"]:
        from flask_login import current_user  # Flask-Login is set up only with AUTH on

        return current_user.user_id
    if "owner" not in session:
        session["owner"] = uuid.uuid4().hex
        session.permanent = True
    return session["owner"]


def upload(files, form, gave_up: Callable[[], bool] = bool) -> tuple[dict, images.Encoded]:
    """Validate an uploaded file (and an optional caption prompt), caption it, keep it."""
    sent = files.getlist("image")
    if not sent:
        # werkzeug drops a whole multipart body whose part headers are not UTF-8 (a Latin-1 file name from curl -F).
        raise InvalidInput("no image in the request: send the file in the multipart field 'image', its file name in "
                           "UTF-8 (a part whose header is in another encoding cannot be read)", code="missing_image")
    if len(sent) > 1:
        raise InvalidInput(f"{len(sent)} files came in the field 'image': send one image per upload",
                           code="too_many_files")
    file = sent[0]
    prompt = field_checks.text(form, "prompt", max_length=MAX_PROMPT, required=False)
    return keep_image(file.stream, field_checks.file_name(file), prompt, gave_up)


def keep_image(stream, original_name: str | None, prompt: str | None = None,
               gave_up: Callable[[], bool] = bool, content_sha256: str | None = None) -> tuple[dict, images.Encoded]:
    """Validate an image file (a binary stream), caption it (continuing prompt, if any), keep it with its record;
    content_sha256 is the file's SHA-256 when the caller has it already."""
    service("models").check_caption(prompt)
    storage.check_writable(current_app.config["UPLOAD_FOLDER"], "UPLOAD_FOLDER")
    content_sha256 = content_sha256 or sent_digest(stream)
    stored, model_input = decode(stream)
    caption = service("models").caption(model_input, prompt, gave_up)
    image_id = str(uuid.uuid4())
    record = {
        "image_id": image_id, "owner": owner(), "filename": image_id + stored.extension,
        "original_name": original_name, "mime_type": stored.mime_type,
        "prompt": prompt, "caption": caption, "created_at": now(), "questions": [], "content_sha256": content_sha256,
    }
    keep("UPLOAD_FOLDER", record["filename"], stored.data, service("history").add_image, record)
    service("models").prepare(image_id, stored_image(record))  # so that even the first question is quick
    return record, stored


def sent_digest(stream) -> str:
    """The SHA-256 of a file as it was sent (before it is re-encoded), in hex; the stream is left at its start."""
    stream.seek(0)
    digest = hashlib.file_digest(stream, "sha256").hexdigest()
    stream.seek(0)
    return digest


def image_for_chat(data: bytes, gave_up: Callable[[], bool] = bool) -> dict:
    """The caller's image with these bytes: the one kept before when they were sent before (a chat client sends
    the whole conversation at every turn), else kept now; once, even when requests bring it at the same time."""
    digest, caller = hashlib.sha256(data).hexdigest(), owner()
    with service("keyed_locks").holding((caller, digest)):
        return (service("history").image_with_content(caller, digest)
                or keep_image(io.BytesIO(data), None, None, gave_up, content_sha256=digest)[0])


def decode(stream) -> tuple[images.Encoded, object]:
    """An upload decoded in one of MAX_DECODES slots: its file to store and the captioner's input.

    The full-size pixels (4 bytes a pixel, up to MAX_IMAGE_PIXELS) live only inside this call, so at most
    MAX_DECODES of them exist at once; a request waiting for the captioner holds only its input.
    """
    config = current_app.config
    with service("decoding"):
        picture = images.read_image(stream, max_pixels=config["MAX_IMAGE_PIXELS"], max_bytes=config["MAX_IMAGE_BYTES"])
        return picture.file, service("models").caption_input(picture.pixels)


def ask(fields_given, gave_up: Callable[[], bool] = bool) -> tuple[dict, str]:
    """Answer a question about a kept image and add it to the caller's thread; return the record and answer."""
    question = field_checks.text(fields_given, "question", max_length=MAX_QUESTION)
    image_id = field_checks.text(fields_given, "image_id", max_length=100)
    return ask_about(image_id, question, gave_up)


def ask_about(image_id: str, question: str, gave_up: Callable[[], bool] = bool) -> tuple[dict, str]:
    """Answer a checked question about a kept image the caller may read, added to the caller's thread."""
    record = readable("images", image_id)
    service("history").check_writable()
    answer = service("models").answer(image_id, stored_image(record), question, gave_up)
    entry = {"question": question, "answer": answer, "asked_at": now(), "owner": owner()}
    record = service("history").add_question(image_id, entry)
    return record, answer


def generate(fields_given) -> tuple[list[tuple[dict, images.Encoded]], dict | None]:
    """Draw num_images images for a description through an inference provider, each kept as its own generation.

    Returns what was made, with what stopped the rest (None when all were made); raises when none was.
    """
    description = field_checks.text(fields_given, "description", max_length=MAX_DESCRIPTION)
    parameters = generation_parameters(fields_given)
    count = field_checks.number(fields_given, "num_images", low=1, high=MAX_IMAGES, default=1)
    storage.check_writable(current_app.config["GENERATED_FOLDER"], "GENERATED_FOLDER")
    check_quota(count)
    made = []
    for index in range(count):
        # One call an image (most providers make one at a time); a given seed goes up by one for each.
        asked = {**parameters, "seed": (parameters["seed"] + index) % 2**32} if "seed" in parameters else parameters
        try:
            drawn = service("hf_client").generate(description, asked)
        except AppError as error:
            if not made:
                raise
            return made, {"count": count - len(made), "error": error.message, "code": error.code}
        generation_id = str(uuid.uuid4())
        record = {
            "generation_id": generation_id, "owner": owner(), "description": description, "parameters": asked,
            "provider": drawn.provider, "filename": generation_id + drawn.file.extension,
            "mime_type": drawn.file.mime_type, "created_at": now(),
        }
        keep("GENERATED_FOLDER", record["filename"], drawn.file.data, service("history").add_generation, record)
        made.append((record, drawn.file))
    return made, None


def generation_parameters(given) -> dict:
    """The optional text-to-image parameters that were given, checked."""
    parameters = {
        "height": field_checks.number(given, "height", low=256, high=1536, multiple_of=8),
        "width": field_checks.number(given, "width", low=256, high=1536, multiple_of=8),
        "num_inference_steps": field_checks.number(given, "num_inference_steps", low=1, high=100),
        "guidance_scale": field_checks.number(given, "guidance_scale", low=0, high=30, kind=float),
        "negative_prompt": field_checks.text(given, "negative_prompt", max_length=MAX_DESCRIPTION, required=False),
        "seed": field_checks.number(given, "seed", low=0, high=2**32 - 1),
    }
    return {name: value for name, value in parameters.items() if value is not None}


def keep(setting: str, filename: str, data: bytes, add_record, record: dict) -> None:
    """Store the file in the folder a setting names, then its record; remove the file if the record failed."""
    config = current_app.config
    with storage.files_locked(config["UPLOAD_FOLDER"], exclusive=False):
        path = storage.store(config[setting], filename, data, setting)
        try:
            add_record(record)
        except BaseException:
            storage.remove(path)
            raise


def stored_image(record: dict) -> Callable[[], Image.Image]:
    """A loader of a record's stored image as RGB, for the model worker (which has no app context)."""
    path = os.path.join(current_app.config["UPLOAD_FOLDER"], record["filename"])
    if not os.path.exists(path):
        raise NotFound(f"the file of image '{record['image_id']}' is gone from the upload folder: "
                       "upload the image again", code="image_file_missing")

    def load() -> Image.Image:
        try:
            with Image.open(path) as image:
                image.load()
                return images.to_rgb(image)  # stored files are RGB already: no copy
        except FileNotFoundError:  # deleted while the request waited for the model
            raise NotFound(f"image '{record['image_id']}' was deleted: upload it again",
                           code="image_not_found") from None

    return load


def shown_path(filename: str) -> str:
    """Where a generated file lies, never absolute: relative to the app folder when the generated
    folder is inside it, else relative to the generated folder's parent."""
    folder = current_app.config["GENERATED_FOLDER"]
    base = current_app.root_path
    if os.path.relpath(folder, base).startswith(".."):
        base = os.path.dirname(folder)
    return os.path.relpath(os.path.join(folder, filename), base)


def image_view(record: dict) -> dict:
    """An image record as the API shows it."""
    return {
        "image_id": record["image_id"],
        "caption": record["caption"],
        "prompt": record.get("prompt"),
        "original_name": record.get("original_name"),
        "mime_type": record["mime_type"],
        "image_url": url_for("api.uploaded_file", name=record["filename"]),
        "created_at": record["created_at"],
        "questions": thread(record),
    }


def thread(record: dict) -> list[dict]:
    """The questions the caller's session asked about an image, with their answers, oldest first.

    With AUTH off an image id lets anyone see the image and ask about it, but each session sees only its
    own thread; with AUTH on, each account sees its own, and an admin every question about the image.
    Entries from before threads were kept per session belong to the image's owner.
    """
    viewer = owner() if current_app.config["AUTH_ON"] else session.get("owner")
    everyone = current_app.config["AUTH_ON"] and signed_in_admin()  # an admin reads every thread
    return [{"question": entry["question"], "answer": entry["answer"], "asked_at": entry["asked_at"]}
            for entry in record["questions"] if everyone or entry.get("owner", record["owner"]) == viewer]


def generation_view(record: dict) -> dict:
    """A generation record as the API shows it."""
    return {
        "generation_id": record["generation_id"],
        "description": record["description"],
        "parameters": record["parameters"],
        "provider": record.get("provider"),
        "mime_type": record["mime_type"],
        "path": shown_path(record["filename"]),
        "image_url": url_for("api.generated_file", name=record["filename"]),
        "created_at": record["created_at"],
    }


def check_quota(count: int, clock: Callable[[], float] = time.time) -> None:
    """Refuse, before any provider is called, generations past the account's GENERATIONS_PER_DAY (a rolling 24
    hours, counted from the stored generations, so that every replica agrees); admins and AUTH off have none."""
    limit = current_app.config["GENERATIONS_PER_DAY"]
    if not current_app.config["AUTH_ON"] or limit == 0 or signed_in_admin():
        return
    if count > limit:
        raise InvalidInput(f"'num_images' is {count}, more than the {limit} generations an account may make in a "
                           "day: ask for fewer", code="invalid_num_images")
    history, moment = service("history"), clock()
    made = history.generations_since(owner(), iso_time(moment - DAY))
    if made + count <= limit:
        return
    # Room comes when the generation at newest-first index limit - count turns a day old.
    (freeing,), _ = history.list("generations", owner(), 1, limit - count)
    wait = max(1, math.ceil(parse_time(freeing["created_at"]) + DAY - moment))
    raise QuotaExceeded(f"this account has made {made} of its {limit} generations in the last 24 hours: "
                        f"{max(0, limit - made)} left, so {count} can be made in {wait} s "
                        f"(at {iso_time(moment + wait)})", headers={"Retry-After": str(wait)})


def readable(kind: str, key: str) -> dict:
    """An image or generation record the caller may read. With AUTH on, only the account's own (an admin's: any);
    another's is refused as NotFound, as an id that does not exist is, so that no one learns which ids exist."""
    history = service("history")
    record = history.image(key) if kind == "images" else history.generation(key)
    if not may_read(record):
        raise not_found(kind, key)
    return record


def may_read(record: dict) -> bool:
    """Whether the caller may read a record of someone's (an image, a generation, a batch job): with AUTH off
    anyone who has its id; with AUTH on its owner, or an admin."""
    return not current_app.config["AUTH_ON"] or record["owner"] == owner() or signed_in_admin()


@contextmanager
def others_hidden(refusal: NotFound):
    """Within the block, another's record (NotOwner, 403) is, with AUTH on, refused as one that does not exist."""
    try:
        yield
    except NotOwner:
        if current_app.config["AUTH_ON"]:
            raise refusal from None
        raise


def signed_in_admin() -> bool:
    """Whether the caller is a signed-in admin (AUTH on)."""
    from flask_login import current_user  # Flask-Login is set up only with AUTH on

    return current_user.is_authenticated and current_user.is_admin


def delete_image(image_id: str) -> None:
    """Delete one of the caller's images: its record with every thread about it, its file, its cached context."""
    with storage.files_locked(current_app.config["UPLOAD_FOLDER"], exclusive=False):
        record = deleted("images", image_id)
        forget_files([record])


def delete_generation(generation_id: str) -> None:
    """Delete one of the caller's generations and its file."""
    with storage.files_locked(current_app.config["UPLOAD_FOLDER"], exclusive=False):
        forget_files([deleted("generations", generation_id)])


def deleted(kind: str, key: str) -> dict:
    """Remove one of the caller's records and return it; with AUTH on, another account's is NotFound (not 403)."""
    with others_hidden(not_found(kind, key)):
        return service("history").delete(kind, key, owner())


def clear_history() -> int:
    """Delete everything the caller's session made (batch jobs too); return how many images and generations went."""
    history = service("history")
    jobs_made = [job["job_id"] for job in history.jobs(owner(), 10**9, 0)[0]]
    with storage.files_locked(current_app.config["UPLOAD_FOLDER"], exclusive=False):
        records = history.clear(owner())
        forget_files(records)
    for job_id in jobs_made:  # the files still waiting in the caller's jobs, which went with the history
        jobs.remove_staged(current_app.config["JOBS_FOLDER"], job_id)
    return len(records)


def forget_files(records: list[dict]) -> None:
    """Remove deleted records' files (and an image's cached context); the records are gone already."""
    config = current_app.config
    for record in records:
        if "image_id" in record:
            storage.remove(os.path.join(config["UPLOAD_FOLDER"], record["filename"]))
            service("models").forget(record["image_id"])
        else:
            storage.remove(os.path.join(config["GENERATED_FOLDER"], record["filename"]))


def history_page(limit: int, offset: int) -> dict:
    """One page of the caller's images and generations, newest first, with their totals."""
    mine, total = service("history").list("images", owner(), limit, offset)
    made, total_made = service("history").list("generations", owner(), limit, offset)
    return {"images": [image_view(record) for record in mine], "total_images": total,
            "generations": [generation_view(record) for record in made], "total_generations": total_made,
            "limit": limit, "offset": offset}
