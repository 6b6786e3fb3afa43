"""`flask --app app history copy [SOURCE] [DEST]`: the history moved between a JSON file and a database.

Each of SOURCE and DEST is a history.json path or a database URL; they default to the app's own
HISTORY_FILE and DATABASE_URL, and relative paths are taken from the app folder, as the app takes
them. The flask command builds the app without models for this (app.serving).
"""

import os

import click
from flask import current_app
from flask.cli import AppGroup

from errors import AppError, SettingError
from history import open_store

history = AppGroup("history", help="The history's stores: a JSON file, SQLite or PostgreSQL.")


@history.command("copy")
@click.argument("source", required=False)
@click.argument("dest", required=False)
def copy(source: str | None, dest: str | None) -> None:
    """Copy every record (images with their threads, generations, owners, times; accounts, their API keys and
    sign-in sessions) from SOURCE to DEST.

    Each is a history.json path or a database URL; they default to HISTORY_FILE and DATABASE_URL.
    A record DEST already holds is replaced by SOURCE's, so running it again changes nothing.
    """
    config = current_app.config
    source = source or config["HISTORY_FILE"]
    dest = dest or config["DATABASE_URL"]
    if not dest:
        raise click.UsageError("name DEST (a history.json path or a database URL), or set DATABASE_URL")
    if "://" not in source and not os.path.isfile(os.path.join(current_app.root_path, source)):
        raise click.UsageError(f"SOURCE {source} is no file: name a history.json or a database URL")
    if described(source) == described(dest):
        raise click.UsageError("SOURCE and DEST are the same store")
    try:
        reading, writing = open_store(source, current_app.root_path), open_store(dest, current_app.root_path)
    except SettingError as error:
        raise click.ClickException(str(error)) from None
    tally = Tally()
    try:
        counts = writing.merge(tally.count(reading.all_records()))
    except AppError as error:  # a database that stopped answering, a full or read-only disk
        raise click.ClickException(f"{error.message} (nothing more was copied)") from None
    finally:
        reading.close()
        writing.close()
    click.echo(f"copied {tally.kinds['images']} images (with {tally.questions} questions) and "
               f"{tally.kinds['generations']} generations, {tally.kinds['users']} accounts with "
               f"{tally.kinds['api_keys']} API keys and {tally.kinds['sessions']} sign-in sessions, from "
               f"{described(source)} to {described(dest)}: {counts['new']} new, {counts['replaced']} already there "
               "(replaced)")
    missing = tally.missing_files(config["UPLOAD_FOLDER"], config["GENERATED_FOLDER"])
    if missing:
        click.echo(f"warning: {missing} records point to files that are not in UPLOAD_FOLDER or GENERATED_FOLDER "
                   "(copy the folders too, or set them to where the files are)", err=True)


class Tally:
    """Counts the records on their way through, and remembers their files."""

    def __init__(self):
        self.kinds = {"images": 0, "generations": 0, "users": 0, "api_keys": 0, "sessions": 0}
        self.questions = 0
        self.files: list[tuple[str, str]] = []

    def count(self, records):
        for kind, record in records:
            self.kinds[kind] += 1
            self.questions += len(record.get("questions", []))
            if "filename" in record:  # images and generations; accounts have no file
                self.files.append((kind, record["filename"]))
            yield kind, record

    def missing_files(self, upload_folder: str, generated_folder: str) -> int:
        folders = {"images": upload_folder, "generations": generated_folder}
        return sum(not os.path.exists(os.path.join(folders[kind], name)) for kind, name in self.files)


def described(target: str) -> str:
    """A store as the output shows it: a URL without its password, a path as given."""
    if "://" not in target:
        return os.path.normpath(os.path.join(current_app.root_path, target))
    from sqlalchemy import exc, make_url

    from history_sql import shown

    try:
        return shown(make_url(target))
    except exc.ArgumentError:  # open_store tells what is wrong with it
        return target
