"""The history store: one JSON file, changed atomically under a lock that holds across processes.

What cannot be read is never overwritten and never stops the app: a file that does not parse is
moved aside whole; a malformed record is skipped (logged once) and, at the next change, moved to
a file of its own beside the history. A read-only folder serves what the file holds and refuses
changes (503); a full disk refuses them (507) and leaves the file as it was.
"""

from __future__ import annotations

import copy
import fcntl
import glob
import json
import logging
import os
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterable, Iterator

from errors import AccountExists, AppError, NotFound, NotOwner, StorageUnreadable
from history_jobs import JobsInFile, is_job
from storage import check_readable, check_writable, faults_told, replace_file

log = logging.getLogger(__name__)

KINDS = ("images", "generations")
ACCOUNT_KINDS = ("users", "api_keys", "sessions")  # absent from files written before accounts: empty then
JOB_KINDS = ("jobs",)  # absent from files written before batch jobs: empty then (history_jobs)
KINDS_ID = {"images": "image_id", "generations": "generation_id", "users": "user_id", "api_keys": "key_id",
            "sessions": "session_hash"}
SETTING = "HISTORY_FILE's folder"
# What a record must hold to be shown: each field and its type (optional ones may also be null).
REQUIRED = {
    "images": {"image_id": str, "owner": str, "filename": str, "mime_type": str, "caption": str,
               "created_at": str, "questions": list},
    "generations": {"generation_id": str, "owner": str, "filename": str, "mime_type": str, "description": str,
                    "parameters": dict, "created_at": str},
    "users": {"user_id": str, "name": str, "role": str, "password_hash": str, "created_at": str,
              "password_changed_at": str},
    "api_keys": {"key_id": str, "user_id": str, "label": str, "prefix": str, "key_hash": str, "created_at": str},
    "sessions": {"session_hash": str, "user_id": str, "created_at": str},
}
OPTIONAL = {"images": {"prompt": str, "original_name": str, "content_sha256": str}, "generations": {"provider": str},
            "users": {}, "api_keys": {"last_used_at": str}, "sessions": {}}
QUESTION = {"question": str, "answer": str, "asked_at": str}
UNREADABLE = (ValueError, UnicodeDecodeError, RecursionError)  # RecursionError: JSON nested too deep


def empty() -> dict:
    """A history with nothing in it."""
    return {kind: {} for kind in KINDS + ACCOUNT_KINDS + JOB_KINDS}


def file_stamp(stat: os.stat_result) -> tuple:
    """What changes whenever the file is replaced: a new inode, time or size."""
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def is_record(kind: str, key: str, record) -> bool:
    """Whether a record has every field the app reads, of the right type, under its own id."""
    if kind == "jobs":
        return is_job(record) and record["job_id"] == key
    if not isinstance(record, dict):
        return False
    fields_ok = all(isinstance(record.get(name), kind_) for name, kind_ in REQUIRED[kind].items()) and all(
        record.get(name) is None or isinstance(record[name], kind_) for name, kind_ in OPTIONAL[kind].items())
    if not fields_ok or record[KINDS_ID[kind]] != key:
        return False
    if kind in ACCOUNT_KINDS:
        return True
    if os.path.basename(record["filename"]) != record["filename"]:
        return False
    return kind != "images" or all(
        isinstance(entry, dict) and all(isinstance(entry.get(name), kind_) for name, kind_ in QUESTION.items())
        for entry in record["questions"])


def split_records(raw) -> tuple[dict, dict]:
    """The parsed file's well-formed records, and its malformed ones; ValueError if it is no history at all."""
    if not isinstance(raw, dict) or not all(isinstance(raw.get(kind), dict) for kind in KINDS) or not all(
            isinstance(raw.get(kind, {}), dict) for kind in ACCOUNT_KINDS + JOB_KINDS):
        raise ValueError("not a history object")
    valid, malformed = empty(), empty()
    for kind in KINDS + ACCOUNT_KINDS + JOB_KINDS:
        for key, record in raw.get(kind, {}).items():
            (valid if is_record(kind, key, record) else malformed)[kind][key] = record
    return valid, malformed


class History(JobsInFile):
    """Images with their questions, generations, accounts and batch jobs, keyed by id in insertion order."""

    def __init__(self, path: str):
        """Open the history at path; SettingError when the file exists but this process may not read it."""
        check_readable(path, "HISTORY_FILE")
        self.path = os.path.abspath(path)
        self.folder = os.path.dirname(self.path)
        self.temporary_prefix = f".{os.path.basename(self.path)}.tmp-"
        # (stamp of the file, its well-formed records, its malformed ones), swapped whole
        self._cache = (None, empty(), empty())
        self._unreadable = None  # the stamp of a file that would not parse, logged once
        self._forbidden_said = False  # whether the log said the file may not be read (until it can again)
        try:
            os.makedirs(self.folder, exist_ok=True)
            with self._locked():
                self._recover()
        except (OSError, AppError) as error:
            log.warning("the history folder %s cannot be written (%s): serving what it holds, refusing changes",
                        self.folder, getattr(error, "strerror", None) or error)
            self._read()

    def add_image(self, record: dict) -> None:
        """Keep a new image record."""
        self._change(lambda data: data["images"].__setitem__(record["image_id"], record))

    def add_question(self, image_id: str, entry: dict) -> dict:
        """Append a question and its answer to an image's thread; return the updated record."""

        def append(data):
            # A new record with a new thread: the one readers may hold stays as it was.
            record = dict(self._find(data, "images", image_id))
            record["questions"] = [*record["questions"], entry]
            data["images"][image_id] = record
            return record

        return copy.deepcopy(self._change(append))

    def add_generation(self, record: dict) -> None:
        """Keep a new generation record."""
        self._change(lambda data: data["generations"].__setitem__(record["generation_id"], record))

    def delete(self, kind: str, key: str, owner: str) -> dict:
        """Remove one record of the owner's and return it; NotFound if there is none, NotOwner if it is not theirs."""

        def remove(data):
            record = self._find(data, kind, key)
            if record["owner"] != owner:
                noun = "image" if kind == "images" else "generation"
                raise NotOwner(f"this {noun} was made in another session: only that session may delete it")
            return data[kind].pop(key)

        return self._change(remove)

    def clear(self, owner: str) -> list[dict]:
        """Remove every record of the owner's (the threads about their images, and their batch jobs too); return
        the images and generations."""

        def remove(data):
            data["jobs"] = {key: record for key, record in data["jobs"].items() if record["owner"] != owner}
            return [data[kind].pop(key) for kind in KINDS
                    for key in [key for key, record in data[kind].items() if record["owner"] == owner]]

        return self._change(remove)

    def check_writable(self) -> None:
        """Refuse before any work when a change could not be written (a read-only folder, a full disk)."""
        check_writable(self.folder, SETTING)

    def image(self, image_id: str) -> dict:
        """One image record; NotFound if there is none."""
        return copy.deepcopy(self._find(self._read(), "images", image_id))

    def generation(self, generation_id: str) -> dict:
        """One generation record; NotFound if there is none."""
        return copy.deepcopy(self._find(self._read(), "generations", generation_id))

    def list(self, kind: str, owner: str, limit: int, offset: int) -> tuple[list[dict], int]:
        """An owner's records of one kind, newest first, one page of them, and how many in all."""
        mine = [record for record in self._read()[kind].values() if record["owner"] == owner]
        mine.reverse()  # then a stable sort: of records made at the same time, the later added comes first
        mine.sort(key=lambda record: record["created_at"], reverse=True)
        return copy.deepcopy(mine[offset : offset + limit]), len(mine)

    def filenames(self) -> set[str]:
        """The stored files that records point to, malformed records' included (their files are kept too)."""
        data = self._read()
        _, _, malformed = self._cache
        records = [record for source in (data, malformed) for kind in KINDS for record in source[kind].values()]
        return {record["filename"] for record in records
                if isinstance(record, dict) and isinstance(record.get("filename"), str)}

    def all_records(self) -> Iterator[tuple[str, dict]]:
        """Every well-formed record as (kind, record), oldest first: images, generations, then accounts, their API
        keys and sign-in sessions."""
        data = self._read()
        for kind in KINDS + ACCOUNT_KINDS:
            for record in data[kind].values():
                yield kind, copy.deepcopy(record)

    def merge(self, records: Iterable[tuple[str, dict]]) -> dict:
        """Put records in, replacing those with the same id, in one write; count them as {"new": n, "replaced": n}."""
        counts = {"new": 0, "replaced": 0}

        def put(data):
            for kind, record in records:
                key = record[KINDS_ID[kind]]
                if kind == "users" and any(user["name"] == record["name"] and user_id != key
                                           for user_id, user in data["users"].items()):
                    raise AccountExists(f"an account named '{record['name']}' but with another id is in DEST "
                                        "already: rename or delete one of them, then copy again")
                counts["replaced" if key in data[kind] else "new"] += 1
                data[kind][key] = record

        self._change(put)
        return counts

    # Accounts, API keys and sign-in sessions: rows only; accounts.py decides what they mean.

    def add_user(self, record: dict) -> None:
        """Keep a new account; AccountExists if its name is taken."""

        def add(data):
            if any(user["name"] == record["name"] for user in data["users"].values()):
                raise AccountExists(f"an account named '{record['name']}' exists already: choose another name")
            data["users"][record["user_id"]] = record

        self._change(add)

    def user(self, user_id: str) -> dict | None:
        """One account by its id, or None."""
        return flat_copy(self._read()["users"].get(user_id))

    def user_named(self, name: str) -> dict | None:
        """One account by its name, or None."""
        return flat_copy(next((user for user in self._read()["users"].values() if user["name"] == name), None))

    def users(self) -> list[dict]:
        """Every account, oldest first."""
        return oldest_first(self._read()["users"].values())

    def set_password(self, user_id: str, password_hash: str, changed_at: str) -> bool:
        """Give an account a new password hash, ending its sessions and keys in the same write; False if none."""

        def change(data):
            if user_id not in data["users"]:
                return False
            data["users"][user_id] = {**data["users"][user_id], "password_hash": password_hash,
                                      "password_changed_at": changed_at}
            drop_access(data, user_id)
            return True

        return self._change(change)

    def delete_user(self, user_id: str) -> bool:
        """Remove an account with its sessions and keys (its records stay, claimable); False if there is none."""

        def change(data):
            if data["users"].pop(user_id, None) is None:
                return False
            drop_access(data, user_id)
            return True

        return self._change(change)

    def add_key(self, record: dict) -> None:
        """Keep a new API key's record (its hash, never the key)."""
        self._change(lambda data: data["api_keys"].__setitem__(record["key_id"], record))

    def key_hashed(self, key_hash: str) -> dict | None:
        """The API key record with this hash, or None."""
        keys = self._read()["api_keys"].values()
        return flat_copy(next((key for key in keys if key["key_hash"] == key_hash), None))

    def keys_of(self, user_id: str) -> list[dict]:
        """An account's API keys, oldest first."""
        return oldest_first(key for key in self._read()["api_keys"].values() if key["user_id"] == user_id)

    def delete_key(self, key_id: str) -> dict | None:
        """Remove an API key; its record, or None if there was none."""
        if key_id not in self._read()["api_keys"]:
            return None
        return self._change(lambda data: data["api_keys"].pop(key_id, None))

    def touch_key(self, key_id: str, when: str) -> None:
        """Note when an API key was last used (nothing if it is gone)."""

        def change(data):
            if key_id in data["api_keys"]:
                data["api_keys"][key_id] = {**data["api_keys"][key_id], "last_used_at": when}

        self._change(change)

    def add_session(self, record: dict) -> None:
        """Keep a new sign-in session (the hash of its token)."""
        self._change(lambda data: data["sessions"].__setitem__(record["session_hash"], record))

    def session_hashed(self, session_hash: str) -> dict | None:
        """The sign-in session with this hash, or None."""
        return flat_copy(self._read()["sessions"].get(session_hash))

    def delete_session(self, session_hash: str) -> None:
        """End a sign-in session (nothing if it has ended)."""
        if session_hash in self._read()["sessions"]:
            self._change(lambda data: data["sessions"].pop(session_hash, None))

    def claim(self, user_id: str) -> dict:
        """Give every image and generation that belongs to no account to this one (and the questions asked in
        sessions of no account); how many images and generations."""

        def change(data):
            counts = {}
            for kind in KINDS:
                ownerless = [key for key, record in data[kind].items() if record["owner"] not in data["users"]]
                for key in ownerless:
                    data[kind][key] = {**data[kind][key], "owner": user_id}
                counts[kind] = len(ownerless)
            # The questions asked in sessions from before accounts, so that the account still sees its threads.
            for key, record in data["images"].items():
                if any(entry.get("owner") not in (None, *data["users"]) for entry in record["questions"]):
                    data["images"][key] = {**record, "questions": [
                        {**entry, "owner": user_id} if entry.get("owner") not in (None, *data["users"]) else entry
                        for entry in record["questions"]]}
            return counts

        return self._change(change)

    def image_with_content(self, owner: str, content_sha256: str) -> dict | None:
        """The owner's newest image whose bytes as sent had this SHA-256, with its thread; None if there is none."""
        found = [record for record in self._read()["images"].values()
                 if record["owner"] == owner and record.get("content_sha256") == content_sha256]
        return copy.deepcopy(found[-1]) if found else None

    def generations_since(self, owner: str, since: str) -> int:
        """How many generations the owner made from a time on (ISO 8601 in UTC)."""
        return sum(1 for record in self._read()["generations"].values()
                   if record["owner"] == owner and record["created_at"] >= since)

    def key_states(self) -> None:
        """No shared key states: one process (or one machine's workers) per JSON file."""
        return None

    def close(self) -> None:
        """Nothing held open between calls."""

    @staticmethod
    def _find(data: dict, kind: str, key: str) -> dict:
        try:
            return data[kind][key]
        except KeyError:
            raise not_found(kind, key) from None

    def _read(self) -> dict:
        # Writers replace the file atomically, so a reader needs no lock: it sees the old
        # file or the new one, never half of one.
        try:
            stamp = file_stamp(os.stat(self.path))
        except FileNotFoundError:
            return empty()
        except PermissionError as error:
            raise self._forbidden(error) from None
        cached_stamp, data, _ = self._cache
        if stamp == cached_stamp:
            return data
        try:
            with open(self.path, encoding="utf-8") as file:
                stamp = file_stamp(os.fstat(file.fileno()))
                valid, malformed = split_records(json.load(file))
        except PermissionError as error:
            raise self._forbidden(error) from None
        except UNREADABLE as error:
            if stamp != self._unreadable:
                self._unreadable = stamp
                log.error("history file %s cannot be read (%s): serving the records read before; the next change "
                          "moves it aside", self.path, type(error).__name__)
            return data
        self._unreadable = None
        self._forbidden_said = False
        counts = {kind: len(malformed[kind]) for kind in KINDS + ACCOUNT_KINDS + JOB_KINDS if malformed[kind]}
        if counts:
            log.warning("history file %s holds malformed records (%s): they are skipped and moved aside at the "
                        "next change", self.path, ", ".join(f"{n} {kind}" for kind, n in counts.items()))
        self._cache = (stamp, valid, malformed)
        return valid

    def _forbidden(self, error: OSError) -> StorageUnreadable:
        """The refusal while the file's permissions, changed under the running app, forbid reading it."""
        if not self._forbidden_said:  # once, not once a request
            self._forbidden_said = True
            log.error("history file %s cannot be read (%s): answering 503 until it can", self.path, error.strerror)
        return StorageUnreadable("the history cannot be read on the server (permission denied): try again later; "
                                 "the server's owner must make HISTORY_FILE readable again")

    def _change(self, change):
        """Read the newest file, apply change, write the result back; all under the lock."""
        with self._locked():
            data = self._read()
            if self._unreadable is not None and os.path.exists(self.path):
                self._move_aside("corrupt")
            _, _, malformed = self._cache
            if any(malformed.values()):
                self._set_aside(malformed)
            # Changes add, replace or remove whole records, so copying the two maps is enough: a
            # record readers may hold is never changed in place (add_question makes a new one).
            data = {kind: dict(records) for kind, records in data.items()}
            result = change(data)
            self._write(data)
            return result

    @contextmanager
    def _locked(self):
        # flock on a file opened per call excludes other threads as well as other processes.
        with faults_told(SETTING, self.path + ".lock"):
            lock_file = open(self.path + ".lock", "a")
        with lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _write(self, data: dict, path: str | None = None) -> None:
        path = path or self.path
        with faults_told(SETTING, path):
            text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
            replace_file(path, text.encode("utf-8"), self.temporary_prefix)
            if path == self.path:
                self._cache = (file_stamp(os.stat(self.path)), data, empty())
            folder = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    def _set_aside(self, malformed: dict) -> None:
        """Keep malformed records in a file of their own, so that rewriting the history loses none."""
        aside = f"{self.path}.malformed-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        self._write(malformed, aside)
        log.warning("moved %d malformed history records to %s", sum(map(len, malformed.values())), aside)

    def _move_aside(self, why: str) -> None:
        aside = f"{self.path}.{why}-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(self.path, aside)
        log.warning("history file %s could not be read; moved it to %s", self.path, aside)
        self._unreadable = None

    def _recover(self) -> None:
        """At start: remove temporary files a crash left, move an unreadable file aside."""
        for leftover in glob.glob(os.path.join(glob.escape(self.folder), self.temporary_prefix + "*")):
            os.unlink(leftover)
        self._read()
        if self._unreadable is not None:
            self._move_aside("corrupt")
            self._cache = (None, empty(), empty())


def iso_time(seconds: float) -> str:
    """A time in seconds since the epoch as the history writes times: ISO 8601 in UTC, milliseconds, so that
    text order is time order."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """A time the history wrote, in seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def not_found(kind: str, key: str) -> NotFound:
    """The refusal of an image or generation id that does not exist (or, with accounts, is another's)."""
    noun = "image" if kind == "images" else "generation"
    return NotFound(f"no {noun} with id '{key}': check the id, or list yours with GET /history",
                    code=f"{noun}_not_found")


def flat_copy(record: dict | None) -> dict | None:
    """A copy of an account row (flat: a shallow copy is whole), so that no caller changes the cached one."""
    return None if record is None else dict(record)


def oldest_first(records: Iterable[dict]) -> list[dict]:
    """Account rows by created_at; those made at the same time in the order they were added."""
    return sorted((dict(record) for record in records), key=lambda record: record["created_at"])


def drop_access(data: dict, user_id: str) -> None:
    """Remove an account's API keys and sign-in sessions from the data about to be written."""
    for kind in ("api_keys", "sessions"):
        data[kind] = {key: row for key, row in data[kind].items() if row["user_id"] != user_id}


def open_store(target: str, root: str):
    """The history a setting names: a database URL (sqlite:///..., postgresql://...) or a JSON file's path."""
    if "://" in target:
        from history_sql import SqlHistory  # SQLAlchemy is imported only where a database is used

        return SqlHistory(target, root)
    return History(os.path.join(root, os.path.expanduser(target)))
