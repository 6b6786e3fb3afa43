"""Identity: accounts, their passwords, API keys and sign-in sessions, and who may see what. No Flask inside.

The rows live in the history's store (history.History or history_sql.SqlHistory), with the history's
crash guarantees; this room decides what they mean:
- passwords are hashed with scrypt, a memory-hard function (werkzeug.security; OWASP's Password Storage
  Cheat Sheet lists scrypt), and are 12 to 1024 characters (OWASP ASVS 4.0 V2.1.1, V2.1.2);
- an API key is 32 random bytes after the prefix `ia_`, shown once; the store keeps its SHA-256 (a key
  has the entropy a password lacks, so a fast hash suffices, as GitHub stores its tokens) and, for
  lists, its first characters;
- a sign-in session is a random token whose SHA-256 the store keeps, so that ending one on the server
  ends it for every replica, and a copy of a cookie from before no longer works (ASVS V3.3.1);
- a new password, or an account's removal, ends its sessions and keys in the same write.
"""

import hashlib
import hmac
import logging
import re
import secrets
import time
import uuid
from datetime import timedelta
from typing import Callable

from werkzeug.security import check_password_hash, generate_password_hash

from errors import AppError, InvalidInput, NotFound
from field_checks import NOT_TEXT
from history import iso_time, parse_time

log = logging.getLogger(__name__)

ROLES = ("admin", "user")
MIN_PASSWORD, MAX_PASSWORD = 12, 1024
KEY_PREFIX = "ia_"
SHOWN_KEY_CHARACTERS = len(KEY_PREFIX) + 6  # what lists show of a key: enough to tell keys apart
NAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
TOUCH_EVERY = 60.0  # seconds: a key's last_used_at is written at most this often, not at every request
# A hash to check an unknown name's password against, so that a refusal takes as long whether the name exists or not.
UNKNOWN_USER_HASH = generate_password_hash(secrets.token_urlsafe(16), method="scrypt")


def account_name(name: str) -> str:
    """A name as accounts keep it: lower case, 1-64 of a-z 0-9 . _ @ -, starting with a letter or digit.

    InvalidInput (invalid_account_name) otherwise.
    """
    normal = name.strip().lower()
    if not NAME.fullmatch(normal):
        raise InvalidInput("an account name is 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter "
                           "or digit", code="invalid_account_name")
    return normal


def check_new_password(password: str) -> None:
    """Refuse a password shorter than 12 or longer than 1024 characters, or holding a control character
    (InvalidInput, weak_password); spaces, also leading and trailing ones, are part of it."""
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"a password has at least {MIN_PASSWORD} characters: a few words make a good one",
                           code="weak_password")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(f"a password has at most {MAX_PASSWORD} characters", code="weak_password")
    if NOT_TEXT.search(password):  # the sign-in form and JSON refuse these, so no one could sign in with it
        raise InvalidInput("a password cannot hold control characters or lone surrogates", code="weak_password")


def hashed(secret: str) -> str:
    """The SHA-256 of an API key or session token, in hex (64 characters)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def public(user: dict) -> dict:
    """What may be shown of an account: no password hash."""
    return {"user_id": user["user_id"], "name": user["name"], "role": user["role"], "created_at": user["created_at"]}


def public_key(key: dict) -> dict:
    """What may be shown of an API key, after its creation: its id, label, first characters and times."""
    return {"key_id": key["key_id"], "label": key["label"], "prefix": key["prefix"], "created_at": key["created_at"],
            "last_used_at": key["last_used_at"]}


class Accounts:
    """Accounts, API keys and sign-in sessions over a history store; clock (seconds) injectable for tests."""

    def __init__(self, store, *, session_lifetime: timedelta = timedelta(days=31),
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.session_lifetime = session_lifetime
        self.clock = clock
        self._touched: dict[str, float] = {}  # key_id -> when this process last wrote its last_used_at

    # Accounts

    def create_user(self, name: str, password: str, role: str = "user") -> dict:
        """A new account (its public fields); InvalidInput for a bad name or password, AccountExists if taken."""
        if role not in ROLES:
            raise InvalidInput(f"a role is one of {', '.join(ROLES)}", code="invalid_role")
        name = account_name(name)
        check_new_password(password)
        created_at = iso_time(self.clock())
        user = {"user_id": uuid.uuid4().hex, "name": name, "role": role,
                "password_hash": generate_password_hash(password, method="scrypt"), "created_at": created_at,
                "password_changed_at": created_at}
        self.store.add_user(user)
        return public(user)

    def users(self) -> list[dict]:
        """Every account's public fields, oldest first."""
        return [public(user) for user in self.store.users()]

    def named(self, name: str) -> dict:
        """An account by name (its full row); NotFound (account_not_found) if there is none."""
        user = self.store.user_named(name.strip().lower())
        if user is None:
            raise NotFound(f"no account named '{name}': list them with `flask --app app users list`",
                           code="account_not_found")
        return user

    def set_password(self, name: str, password: str) -> None:
        """Give an account a new password; its sessions and API keys end at once (every replica)."""
        check_new_password(password)
        user = self.named(name)
        if not self.store.set_password(user["user_id"], generate_password_hash(password, method="scrypt"),
                                       iso_time(self.clock())):
            raise NotFound(f"no account named '{name}'", code="account_not_found")  # removed meanwhile

    def delete_user(self, name: str) -> dict:
        """Remove an account, its sessions and API keys; its images and generations stay (claimable)."""
        user = self.named(name)
        self.store.delete_user(user["user_id"])
        return public(user)

    def authenticate(self, name: str, password: str) -> dict | None:
        """The account whose name and password these are, else None; as slow for an unknown name as a known one."""
        try:
            user = self.store.user_named(account_name(name))
        except InvalidInput:
            user = None
        if user is None or len(password) > MAX_PASSWORD:
            check_password_hash(UNKNOWN_USER_HASH, password[:MAX_PASSWORD])
            return None
        return user if check_password_hash(user["password_hash"], password) else None

    def claim(self, name: str) -> dict:
        """Give every image and generation that belongs to no account to this one: {"images": n, "generations": n}."""
        return self.store.claim(self.named(name)["user_id"])

    # API keys

    def create_key(self, user_id: str, label: str = "") -> tuple[dict, str]:
        """A new API key for an account: its public record and the key itself, which is shown this once."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = {"key_id": uuid.uuid4().hex[:16], "user_id": user_id, "label": label,
                  "prefix": key[:SHOWN_KEY_CHARACTERS], "key_hash": hashed(key), "created_at": iso_time(self.clock()),
                  "last_used_at": None}
        self.store.add_key(record)
        return public_key(record), key

    def keys(self, user_id: str) -> list[dict]:
        """An account's API keys (public fields), oldest first."""
        return [public_key(key) for key in self.store.keys_of(user_id)]

    def revoke_key(self, key_id: str, user_id: str | None = None) -> bool:
        """Revoke an API key (only one of user_id's, when given); whether there was such a key."""
        if user_id is not None and key_id not in {key["key_id"] for key in self.store.keys_of(user_id)}:
            return False  # another account's key is refused as an unknown one: its id is not confirmed
        return self.store.delete_key(key_id) is not None

    def user_for_key(self, key: str) -> dict | None:
        """The account an API key belongs to, else None; notes the key's use (at most once a minute)."""
        if not key.startswith(KEY_PREFIX) or len(key) > 200:
            return None
        digest = hashed(key)
        record = self.store.key_hashed(digest)
        if record is None or not hmac.compare_digest(record["key_hash"], digest):
            return None
        user = self.still_valid(record)
        if user is not None:
            self._touch(record["key_id"])
        return user

    def still_valid(self, record: dict) -> dict | None:
        """The account of a key or session record, unless the account is gone or its password changed after the
        record was made (one made from a password checked just before the change, which the change did not see)."""
        user = self.store.user(record["user_id"])
        if user is None or record["created_at"] < user["password_changed_at"]:
            return None
        return user

    def _touch(self, key_id: str) -> None:
        moment = self.clock()
        if moment - self._touched.get(key_id, float("-inf")) >= TOUCH_EVERY:
            self._touched[key_id] = moment
            try:
                self.store.touch_key(key_id, iso_time(self.clock()))
            except AppError as error:  # a read-only or full store: the request goes on, last_used_at waits
                log.warning("could not note the use of API key %s (%s)", key_id, error.code)

    # Sign-in sessions

    def start_session(self, user_id: str) -> str:
        """A new sign-in session's token (for the cookie); the store keeps only its hash."""
        token = secrets.token_urlsafe(32)
        self.store.add_session({"session_hash": hashed(token), "user_id": user_id,
                                "created_at": iso_time(self.clock())})
        return token

    def end_session(self, token: str) -> None:
        """End a sign-in session on the server: its cookie no longer works anywhere."""
        self.store.delete_session(hashed(token))

    def user_for_session(self, token: str) -> dict | None:
        """The account a session token signs in, else None (unknown, ended, or older than the session lifetime)."""
        if not token or len(token) > 200:
            return None
        digest = hashed(token)
        record = self.store.session_hashed(digest)
        if record is None or not hmac.compare_digest(record["session_hash"], digest):
            return None
        if self.clock() - parse_time(record["created_at"]) > self.session_lifetime.total_seconds():
            self.store.delete_session(digest)
            return None
        return self.still_valid(record)
