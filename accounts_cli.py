"""`flask --app app users ...` and `flask --app app keys ...`: accounts and API keys from the command line.

A password is asked twice at a terminal, or read as one line from standard input when that is not a
terminal (`printf '%s\\n' "$PASSWORD" | flask --app app users create ada --admin`). A new key is printed
alone on the last line, so that scripts can take it with `tail -n 1`. The commands work on the store the
app uses (DATABASE_URL, else HISTORY_FILE), with the app built without models (app.serving).
"""

import sys
from contextlib import contextmanager

import click
from flask import current_app
from flask.cli import AppGroup

from accounts import Accounts
from errors import AppError, SettingError
from history import open_store

users = AppGroup("users", help="Accounts: create, list, delete, change a password, claim old records.")
keys = AppGroup("keys", help="API keys: create, list, revoke.")


@contextmanager
def accounts():
    """Accounts over the app's store, closed after the command; a store or input error is one line, exit 1."""
    config = current_app.config
    try:
        store = open_store(config["DATABASE_URL"] or config["HISTORY_FILE"], current_app.root_path)
    except SettingError as error:
        raise click.ClickException(str(error)) from None
    try:
        yield Accounts(store)
    except AppError as error:
        raise click.ClickException(error.message) from None
    finally:
        store.close()


def read_password() -> str:
    """A new password: asked twice at a terminal, else the first line of standard input."""
    if sys.stdin.isatty():
        return click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return sys.stdin.readline().rstrip("\r\n")


@users.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="An administrator: may read everything and see /healthz in full.")
def create_user(name: str, admin: bool) -> None:
    """Create an account NAME (password from a prompt, or from standard input)."""
    with accounts() as identity:
        user = identity.create_user(name, read_password(), "admin" if admin else "user")
    click.echo(f"created the {user['role']} account '{user['name']}'")


@users.command("list")
def list_users() -> None:
    """List the accounts: name, role, created."""
    with accounts() as identity:
        for user in identity.users():
            click.echo(f"{user['name']}\t{user['role']}\t{user['created_at']}")


@users.command("delete")
@click.argument("name")
def delete_user(name: str) -> None:
    """Delete the account NAME; its sessions and API keys end at once, its images and generations stay."""
    with accounts() as identity:
        user = identity.delete_user(name)
    click.echo(f"deleted the account '{user['name']}' (its images and generations stay: `users claim` gives them "
               "to another account)")


@users.command("password")
@click.argument("name")
def change_password(name: str) -> None:
    """Give NAME a new password; its sessions and API keys end at once."""
    with accounts() as identity:
        identity.named(name)  # before asking for a password
        identity.set_password(name, read_password())
    click.echo(f"changed the password of '{name.strip().lower()}': its sessions and API keys have ended")


@users.command("claim")
@click.argument("name")
def claim(name: str) -> None:
    """Give every image and generation that belongs to no account (made before accounts) to NAME."""
    with accounts() as identity:
        counts = identity.claim(name)
    click.echo(f"gave {counts['images']} images and {counts['generations']} generations to '{name.strip().lower()}'")


@keys.command("create")
@click.argument("name")
@click.option("--label", default="", help="What the key is for, as lists show it.")
def create_key(name: str, label: str) -> None:
    """Make an API key for NAME; the key is printed once, alone on the last line."""
    with accounts() as identity:
        record, key = identity.create_key(identity.named(name)["user_id"], label)
    click.echo(f"created the key {record['key_id']} for '{name.strip().lower()}'; it is shown only now:")
    click.echo(key)


@keys.command("list")
@click.argument("name")
def list_keys(name: str) -> None:
    """List NAME's API keys: id, first characters, label, created, last used."""
    with accounts() as identity:
        for key in identity.keys(identity.named(name)["user_id"]):
            click.echo(f"{key['key_id']}\t{key['prefix']}…\t{key['label']}\t{key['created_at']}\t"
                       f"{key['last_used_at'] or 'never used'}")


@keys.command("revoke")
@click.argument("key_id")
def revoke_key(key_id: str) -> None:
    """Revoke the API key KEY_ID: it is refused from the next request on, on every replica."""
    with accounts() as identity:
        if not identity.revoke_key(key_id):
            raise click.ClickException(f"no API key with id '{key_id}': list them with `keys list NAME`")
    click.echo(f"revoked the key {key_id}")
