"""`flask --app app caption FOLDER`: every image in a folder captioned with the app's caption model, no server.

The images are read with the same checks an upload gets (images.read_image: PNG or JPEG by content, MAX_IMAGE_BYTES,
MAX_IMAGE_PIXELS, upright, sRGB, first frame) and captioned in batches of MAX_BATCH, while the next batch is read.
The captions are written as exports.py lays out a training set: a `<stem>.txt` beside each image (written as soon
as its batch is done, so that an interrupted run keeps what it made), or one FOLDER/metadata.jsonl or
FOLDER/metadata.csv. Exit status: 0 when every image was captioned, 1 when some failed (each named with its
reason), 2 for a wrong argument, 4 when the caption model cannot be loaded (as the server's start).
"""

import csv
import errno
import io
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import click
from flask import current_app
from flask.cli import with_appcontext
from tqdm import tqdm

import exports
import images
import storage
from actions import MAX_PROMPT
from errors import AppError, SettingError
from field_checks import NOT_TEXT

# Disk faults that every later write would meet too: the run stops at the first.
STOPPING_FAULTS = storage.NO_SPACE | {errno.EROFS}
METADATA_NAMES = {"jsonl": exports.JSONL_NAME, "csv": exports.CSV_NAME}


class ModelUnavailable(click.ClickException):
    """The caption model cannot be loaded: one line with the fix, and the server start's exit status."""

    exit_code = SettingError.exit_status


@click.command("caption")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, dir_okay=True))
@click.option("--prefix", help="Text put before each caption, joined by a space (a trigger word: 'sks,').")
@click.option("--suffix", help="Text put after each caption, joined by a space.")
@click.option("--prompt", help="Start of every caption, which the model continues (as an upload's prompt).")
@click.option("--skip-existing", is_flag=True,
              help="Leave images that have a caption already (their .txt, or their row in the metadata file).")
@click.option("--format", "layout", type=click.Choice(exports.FORMATS), default="txt", show_default=True,
              help="txt: a <stem>.txt beside each image; jsonl: FOLDER/metadata.jsonl; csv: FOLDER/metadata.csv.")
@with_appcontext
def caption(folder: str, prefix: str | None, suffix: str | None, prompt: str | None, skip_existing: bool,
            layout: str) -> None:
    """Caption every image under FOLDER (recursively, hidden files and folders left out) with CAPTION_MODEL."""
    prompt = checked_prompt(prompt)
    for option, value in (("--prefix", prefix), ("--suffix", suffix)):
        problem = value and exports.affix_problem(value)
        if problem:
            raise click.UsageError(f"{option} {problem}: give it on one line")
    found = image_files(folder)
    if layout == "txt":
        names = exports.text_file_names(found)
        done = {name for name in found if skip_existing and os.path.isfile(os.path.join(folder, names[name]))}
        rows = {}
    else:
        names = {}
        rows = read_metadata(folder, layout) if skip_existing else {}
        done = {name for name in found if name in rows}
    wanted = [name for name in found if name not in done]
    failures: dict[str, str] = {}
    captioned = 0
    try:
        if wanted:
            captioner = caption_model(prompt)
            with tqdm(total=len(wanted), unit="image", file=sys.stderr, dynamic_ncols=True) as bar:
                for made, failed in captions(captioner, folder, wanted, prompt):
                    failures.update(failed)
                    for name, text in made.items():
                        text = exports.full_caption(text, prefix, suffix)
                        if layout == "txt":
                            problem = write_caption_file(os.path.join(folder, names[name]), text)
                            if problem:
                                failures[name] = problem
                                continue
                        else:
                            rows[name] = text
                        captioned += 1
                    bar.update(len(made) + len(failed))
    finally:
        # Also after Ctrl-C or an error: what was captioned is kept, and --skip-existing goes on from there.
        if layout != "txt" and captioned:
            write_metadata(folder, layout, rows)
    for name, reason in failures.items():
        click.echo(f"failed: {name}: {reason}", err=True)
    click.echo(f"{captioned} captioned, {len(done)} skipped, {len(failures)} failed")
    if failures:
        click.get_current_context().exit(1)


def checked_prompt(prompt: str | None) -> str | None:
    """The prompt stripped (None when blank), refused as an upload's would be before any model loads."""
    if prompt is None or not prompt.strip():
        return None
    if NOT_TEXT.search(prompt):
        raise click.UsageError("--prompt holds characters that are not text (a control character): remove them")
    prompt = prompt.strip()
    if len(prompt) > MAX_PROMPT:
        raise click.UsageError(f"--prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT}: shorten it")
    return prompt


def image_files(folder: str) -> list[str]:
    """The image files under folder by extension, as paths relative to it with "/", sorted; hidden ones left out."""
    found = []
    for parent, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        relative = os.path.relpath(parent, folder)
        for name in files:
            # Regular files only (a link to one too): opening a FIFO or a device would wait for ever.
            if (not name.startswith(".") and os.path.splitext(name)[1].lower() in images.IMAGE_EXTENSIONS
                    and os.path.isfile(os.path.join(parent, name))):
                path = name if relative == "." else os.path.join(relative, name)
                found.append(path.replace(os.sep, "/"))
    return sorted(found)


def caption_model(prompt: str | None):
    """The caption model loaded as the server loads it (the VQA model is not); raises when it cannot be used."""
    from app import load_models  # app.py imports this module

    try:
        captioner, _ = load_models(current_app.config, True, False)
    except SettingError as error:
        raise ModelUnavailable(f"cannot start: {error}") from None
    if not getattr(captioner, "ready", True):
        raise ModelUnavailable(captioner.message)
    if prompt is not None and not captioner.prompt_fits(prompt):
        raise click.UsageError("--prompt is too long for the caption model: the caption continues it within "
                               "CAPTION_MAX_LENGTH tokens, so shorten it to a few words")
    return captioner


def captions(captioner, folder: str, names: list[str], prompt: str | None):
    """Caption the images in batches of MAX_BATCH; yields ({name: caption}, {name: why it failed}) a batch.

    The next batch is read (MAX_DECODES at a time) while the model captions this one: reading is Pillow's
    work and the model's is torch's, in this thread alone (see models.in_passing_thread).
    """
    config = current_app.config
    size = config["MAX_BATCH"]
    batches = [names[start : start + size] for start in range(0, len(names), size)]

    def read(name: str):
        return model_input(captioner, os.path.join(folder, name), config)

    with ThreadPoolExecutor(max_workers=config["MAX_DECODES"], thread_name_prefix="caption-read") as pool:
        pending = [(name, pool.submit(read, name)) for name in batches[0]]
        try:
            for index in range(len(batches)):
                inputs, failed = {}, {}
                for name, future in pending:
                    outcome = future.result()
                    if isinstance(outcome, str):
                        failed[name] = outcome
                    else:
                        inputs[name] = outcome
                following = batches[index + 1] if index + 1 < len(batches) else []
                pending = [(name, pool.submit(read, name)) for name in following]
                made = dict(zip(inputs, captioner.caption_batch(list(inputs.values()), prompt))) if inputs else {}
                yield made, failed
        finally:
            cancel(future for _, future in pending)


def cancel(futures) -> None:
    """Cancel the reads not started yet (the run stopped early)."""
    for future in futures:
        future.cancel()


def model_input(captioner, path: str, config):
    """An image file read as an upload is, then the captioner's input; a string that says why when it cannot be."""
    try:
        with open(path, "rb") as file:
            picture = images.read_image(file, max_pixels=config["MAX_IMAGE_PIXELS"],
                                        max_bytes=config["MAX_IMAGE_BYTES"])
        return captioner.model_input(picture.pixels)
    except AppError as error:
        return error.message
    except OSError as error:
        return f"the file cannot be read ({error.strerror or error})"
    except Exception as error:  # one file Pillow stumbles on must not end a run over thousands: it is named instead
        return f"the file cannot be read ({type(error).__name__}: {error})"


def write_caption_file(path: str, text: str) -> str | None:
    """Write a caption file atomically, with the permissions a new file gets; None, or why it could not be."""
    try:
        write_file(path, text)
    except OSError as error:
        if error.errno in STOPPING_FAULTS:
            raise click.ClickException(f"{path} cannot be written ({error.strerror}): nothing more was captioned; "
                                       "free some space or make the folder writable, then run again with "
                                       "--skip-existing") from None
        return f"its caption file {os.path.basename(path)} cannot be written ({error.strerror})"
    return None


def write_file(path: str, text: str) -> None:
    """text in UTF-8 to path through a temporary file renamed over it, then given the mode the umask allows
    (storage.replace_file makes it 0600, fit for the app's own files but not for a data set others read)."""
    storage.replace_file(path, text.encode("utf-8"))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def read_metadata(folder: str, layout: str) -> dict[str, str]:
    """The rows an existing metadata file holds, {file_name: caption} in its order; none when there is no file."""
    path = os.path.join(folder, METADATA_NAMES[layout])
    try:
        with open(path, encoding="utf-8", newline="") as file:
            text = file.read()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise click.ClickException(f"{path} cannot be read ({getattr(error, 'strerror', None) or error}): "
                                   "fix or remove it, or run without --skip-existing") from None
    rows = {}
    try:
        if layout == "jsonl":
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    rows[row_field(row, "file_name", number)] = row_field(row, "text", number)
        else:
            for number, row in enumerate(csv.DictReader(io.StringIO(text, newline="")), 2):
                rows[row_field(row, "file_name", number)] = row_field(row, "caption", number)
    except (ValueError, csv.Error) as error:
        raise click.ClickException(f"{path} cannot be read ({error}): fix or remove it, or run without "
                                   "--skip-existing") from None
    return rows


def row_field(row, field: str, line: int) -> str:
    """One text field of a metadata row; ValueError naming the line when it is missing."""
    value = row.get(field) if isinstance(row, dict) else None
    if not isinstance(value, str):
        raise ValueError(f"line {line} has no '{field}'")
    return value


def write_metadata(folder: str, layout: str, rows: dict[str, str]) -> None:
    """Write FOLDER/metadata.jsonl or .csv with every row, atomically; a disk fault is one line."""
    path = os.path.join(folder, METADATA_NAMES[layout])
    text = (exports.jsonl_text if layout == "jsonl" else exports.csv_text)(rows.items())
    try:
        write_file(path, text)
    except OSError as error:
        raise click.ClickException(f"{path} cannot be written ({error.strerror}): the captions of this run are "
                                   "lost; free some space or make the folder writable, and run again") from None
    click.echo(f"wrote {path} ({len(rows)} rows)", err=True)
