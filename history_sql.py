"""The history in a database (DATABASE_URL: SQLite or PostgreSQL) through SQLAlchemy, and the keys' shared states.

The same records, answers and errors as the JSON store (history.History), kept as rows: a question
appends one row, a page of a session's history is an indexed query on (owner, created_at). The
schema is made and upgraded at start by the migrations in migrations/ (Alembic), one process at a
time; a database that a newer release has upgraded is refused. Replicas on one database also share
the API keys' states (key_states), so one replica's 429 rests the key for all. Accounts, their API
keys and sign-in sessions are rows here too (users, api_keys, sessions); accounts.py says what they mean.
"""

from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager
from typing import Iterable, Iterator

import sqlalchemy as sa

from errors import (AccountExists, AppError, DatabaseUnavailable, InsufficientStorage, NotFound, NotOwner,
                    SettingError, StorageReadOnly)
from history_sql_jobs import JobsInDatabase
from history_tables import (ACCOUNT_FIELDS, ACCOUNT_KEYS, ACCOUNT_TABLES, FIELDS, KEY_COLUMN, QUESTION_FIELDS, TABLES,
                            api_keys, generations, images, job_items, jobs, key_states, metadata, questions, record,
                            row, sessions, users)
from storage import NOT_WRITABLE, check_readable, check_writable

log = logging.getLogger(__name__)

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
SETTING = "DATABASE_URL"
CHUNK = 1000  # records a statement or a transaction takes at most when copying
MIGRATION_LOCK = 7_305_419_810  # the advisory lock PostgreSQL replicas take while one of them migrates



class SchemaTooNew(SettingError):
    """The database was upgraded by a newer release of the app than this one."""


def database_url(value: str, root: str) -> sa.URL:
    """DATABASE_URL as SQLAlchemy takes it: PostgreSQL through psycopg 3, a relative SQLite path taken from root."""
    try:
        url = sa.make_url(value)
    except sa.exc.ArgumentError:
        raise SettingError("DATABASE_URL is not a database URL: use sqlite:///history.db or "
                         "postgresql://user@host/database") from None
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise SettingError("DATABASE_URL names no SQLite file: use sqlite:///history.db (a file, so that the "
                             "history outlives the process)")
        return url.set(database=os.path.join(root, os.path.expanduser(url.database)))
    raise SettingError(f"DATABASE_URL names a {backend} database: use sqlite:///... or postgresql://...")


def make_engine(url: sa.URL) -> sa.Engine:
    """An engine with the settings each backend needs under several threads and processes."""
    if url.get_backend_name() == "sqlite":
        os.makedirs(os.path.dirname(url.database), exist_ok=True)
        # Wait for another writer up to 30 s instead of failing at once.
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        # SQLite's default rollback journal, not WAL: a WAL database cannot even be read from a
        # read-only folder, and this one serves its records from one, as the JSON file does.
        @sa.event.listens_for(engine, "connect")
        def on_connect(connection, _):
            connection.execute("PRAGMA foreign_keys=ON")

        return engine
    # pre_ping: a connection the server closed (a restart) is replaced before it fails a request.
    return sa.create_engine(url, pool_pre_ping=True)


def migrate(engine: sa.Engine) -> None:
    """Create or upgrade the schema to this release's; refuse a database a newer release has upgraded."""
    # Alembic's own INFO lines say nothing a user needs; this function logs what it did.
    for name in ("alembic.runtime.plugins", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    with migration_lock(engine) as connection:
        current = MigrationContext.configure(connection).get_current_heads()
        for revision in current:
            try:
                script.get_revision(revision)
            except CommandError:
                raise SchemaTooNew(
                    f"the history database ({shown(engine.url)}) has schema version {revision}, made by a newer "
                    f"release of the app; this one knows up to {head}: run the newer release, or point "
                    "DATABASE_URL at another database") from None
        if current != (head,):
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            log.info("history database %s: schema %s -> %s", shown(engine.url), ", ".join(current) or "none", head)


@contextmanager
def migration_lock(engine: sa.Engine):
    """A connection in a transaction that only one process at a time holds (replicas start together)."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": MIGRATION_LOCK})
            yield connection
        return
    try:
        lock_file = open(engine.url.database + ".lock", "a")
    except OSError as error:
        if error.errno not in NOT_WRITABLE:
            raise
        # A read-only folder: no process can migrate, so none needs the lock; a current schema is only read.
        with engine.begin() as connection:
            yield connection
        return
    with lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        with engine.begin() as connection:
            yield connection


def shown(url: sa.URL) -> str:
    """A database URL as logs and messages may show it: never its password."""
    return url.render_as_string(hide_password=True)


class SqlHistory(JobsInDatabase):
    """The history's records in a database: the same methods as history.History."""

    def __init__(self, url: str, root: str = "."):
        self.url = database_url(url, root)
        if self.url.get_backend_name() == "sqlite":
            check_readable(self.url.database, "DATABASE_URL's SQLite file",
                           instead="point DATABASE_URL at another file")
        self.engine = make_engine(self.url)
        try:
            migrate(self.engine)
        except sa.exc.DBAPIError as error:
            raise SettingError(f"the history database ({shown(self.url)}) cannot be used: {reason(error)}: check "
                               "DATABASE_URL, and that the database is up and this process may use it") from None
        log.info("history in the database %s", shown(self.url))
        try:
            self.check_writable()
        except AppError as error:
            log.warning("the history database cannot be written (%s): serving what it holds, refusing changes",
                        error.code)

    def add_image(self, record: dict) -> None:
        """Keep a new image record."""
        with self._transaction() as db:
            db.execute(images.insert(), [row("images", record)])
            add_questions(db, record["image_id"], record["questions"])

    def add_question(self, image_id: str, entry: dict) -> dict:
        """Append a question and its answer to an image's thread; return the updated record."""
        try:
            with self._transaction() as db:
                found = self._row(db, "images", image_id)
                add_questions(db, image_id, [entry])
                return with_threads(db, [found])[0]
        except sa.exc.IntegrityError:  # the image was deleted between the two statements
            raise not_found("images", image_id) from None

    def add_generation(self, record: dict) -> None:
        """Keep a new generation record."""
        with self._transaction() as db:
            db.execute(generations.insert(), [row("generations", record)])

    def delete(self, kind: str, key: str, owner: str) -> dict:
        """Remove one record of the owner's and return it; NotFound if there is none, NotOwner if it is not theirs."""
        with self._transaction() as db:
            record = self._row(db, kind, key)
            if record["owner"] != owner:
                noun = "image" if kind == "images" else "generation"
                raise NotOwner(f"this {noun} was made in another session: only that session may delete it")
            if kind == "images":
                record = with_threads(db, [record])[0]
                db.execute(questions.delete().where(questions.c.image_id == key))
            if db.execute(TABLES[kind].delete().where(KEY_COLUMN[kind] == key)).rowcount == 0:
                raise not_found(kind, key)  # another request deleted it first
            return record

    def clear(self, owner: str) -> list[dict]:
        """Remove every record of the owner's (the threads about their images, and their batch jobs too); return
        the images and generations."""
        with self._transaction() as db:
            owned_jobs = sa.select(jobs.c.job_id).where(jobs.c.owner == owner).scalar_subquery()
            db.execute(job_items.delete().where(job_items.c.job_id.in_(owned_jobs)))
            db.execute(jobs.delete().where(jobs.c.owner == owner))
            mine = [record("images", found) for found in db.execute(
                sa.select(images).where(images.c.owner == owner).order_by(images.c.id)).mappings()]
            removed = with_threads(db, mine)
            ids = [record["image_id"] for record in removed]
            for start in range(0, len(ids), CHUNK):
                db.execute(questions.delete().where(questions.c.image_id.in_(ids[start : start + CHUNK])))
            db.execute(images.delete().where(images.c.owner == owner))
            made = db.execute(sa.select(generations).where(generations.c.owner == owner)
                              .order_by(generations.c.id)).mappings()
            removed += [record("generations", found) for found in made]
            db.execute(generations.delete().where(generations.c.owner == owner))
            return removed

    def check_writable(self) -> None:
        """Refuse before any work when a change could not be written: SQLite's folder read-only or full."""
        if self.url.get_backend_name() == "sqlite":
            check_writable(os.path.dirname(self.url.database), f"{SETTING}'s folder")

    def image(self, image_id: str) -> dict:
        """One image record; NotFound if there is none."""
        with self._connection() as db:
            return with_threads(db, [self._row(db, "images", image_id)])[0]

    def generation(self, generation_id: str) -> dict:
        """One generation record; NotFound if there is none."""
        with self._connection() as db:
            return self._row(db, "generations", generation_id)

    def list(self, kind: str, owner: str, limit: int, offset: int) -> tuple[list[dict], int]:
        """An owner's records of one kind, newest first, one page of them, and how many in all."""
        table = TABLES[kind]
        page = (sa.select(table).where(table.c.owner == owner)
                .order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit).offset(offset))
        with self._connection() as db:
            found = [record(kind, row_) for row_ in db.execute(page).mappings()]
            total = db.execute(sa.select(sa.func.count()).select_from(table).where(table.c.owner == owner)).scalar()
            return (with_threads(db, found) if kind == "images" else found), total

    def filenames(self) -> set[str]:
        """The stored files that records point to."""
        with self._connection() as db:
            return set(db.execute(sa.union_all(sa.select(images.c.filename), sa.select(generations.c.filename)))
                       .scalars())

    def all_records(self) -> Iterator[tuple[str, dict]]:
        """Every record as (kind, record), oldest first, images with their threads; read CHUNK at a time."""
        for kind, table in TABLES.items():
            last = 0
            while True:
                with self._connection() as db:
                    rows = db.execute(sa.select(table).where(table.c.id > last).order_by(table.c.id)
                                      .limit(CHUNK)).mappings().all()
                    found = [record(kind, row_) for row_ in rows]
                    found = with_threads(db, found) if kind == "images" else found
                if not rows:
                    break
                last = rows[-1]["id"]
                yield from ((kind, one) for one in found)
        for kind, table in ACCOUNT_TABLES.items():  # few rows: accounts, their keys and sessions
            with self._connection() as db:
                rows = db.execute(sa.select(table).order_by(table.c.id)).mappings().all()
            yield from ((kind, account_record(table, row_)) for row_ in rows)

    def merge(self, records: Iterable[tuple[str, dict]]) -> dict:
        """Put records in, replacing those with the same id; count them as {"new": n, "replaced": n}."""
        counts = {"new": 0, "replaced": 0}
        batch: list[tuple[str, dict]] = []
        for item in records:
            batch.append(item)
            if len(batch) == CHUNK:
                self._merge_batch(batch, counts)
                batch = []
        if batch:
            self._merge_batch(batch, counts)
        with self._transaction() as db:
            db.execute(sa.text("ANALYZE"))  # the planner's statistics, stale after many rows at once
        return counts

    def _merge_batch(self, batch: list[tuple[str, dict]], counts: dict) -> None:
        with self._transaction() as db:
            for kind, table in TABLES.items():
                given = {one[FIELDS[kind][0]]: one for kind_, one in batch if kind_ == kind}
                if not given:
                    continue
                there = set(db.execute(sa.select(KEY_COLUMN[kind]).where(KEY_COLUMN[kind].in_(given))).scalars())
                if there and kind == "images":
                    db.execute(questions.delete().where(questions.c.image_id.in_(there)))
                if there:
                    db.execute(table.delete().where(KEY_COLUMN[kind].in_(there)))
                db.execute(table.insert(), [row(kind, one) for one in given.values()])
                if kind == "images":
                    entries = [question_row(key, entry) for key, one in given.items() for entry in one["questions"]]
                    if entries:
                        db.execute(questions.insert(), entries)
                counts["new"] += len(given) - len(there)
                counts["replaced"] += len(there)
            for kind, table in ACCOUNT_TABLES.items():
                key = table.c[ACCOUNT_KEYS[kind]]
                given = {one[ACCOUNT_KEYS[kind]]: one for kind_, one in batch if kind_ == kind}
                if not given:
                    continue
                there = set(db.execute(sa.select(key).where(key.in_(given))).scalars())
                if there:
                    db.execute(table.delete().where(key.in_(there)))
                try:
                    with db.begin_nested():
                        db.execute(table.insert(), [account_row(table, one) for one in given.values()])
                except sa.exc.IntegrityError:
                    raise AccountExists("an account of the same name but with another id is in DEST already: "
                                        "rename or delete one of them, then copy again") from None
                counts["new"] += len(given) - len(there)
                counts["replaced"] += len(there)

    def add_user(self, record: dict) -> None:
        """Keep a new account; AccountExists if its name is taken."""
        try:
            with self._transaction() as db:
                db.execute(users.insert(), [account_row(users, record)])
        except sa.exc.IntegrityError:
            if self.user_named(record["name"]) is None:
                raise  # another unique column (the generated user_id) collided: no fault of the person's
            raise AccountExists(f"an account named '{record['name']}' exists already: choose another name") from None

    def user(self, user_id: str) -> dict | None:
        """One account by its id, or None."""
        return self._account_row(users, users.c.user_id == user_id)

    def user_named(self, name: str) -> dict | None:
        """One account by its name, or None."""
        return self._account_row(users, users.c.name == name)

    def users(self) -> list[dict]:
        """Every account, oldest first."""
        return self._account_rows(users, sa.true())

    def set_password(self, user_id: str, password_hash: str, changed_at: str) -> bool:
        """Replace an account's password and end its sessions and keys; False if there is no such account."""
        change = (users.update().where(users.c.user_id == user_id)
                  .values(password_hash=password_hash, password_changed_at=changed_at))
        with self._transaction() as db:
            if db.execute(change).rowcount == 0:
                return False
            end_access(db, user_id)
            return True

    def delete_user(self, user_id: str) -> bool:
        """Remove an account with its sessions and keys (its records stay); False if there is no such account."""
        with self._transaction() as db:
            end_access(db, user_id)  # even with no account: keys or sessions left without one open nothing
            return db.execute(users.delete().where(users.c.user_id == user_id)).rowcount > 0

    def add_key(self, record: dict) -> None:
        """Keep a new API key's record (its hash, never the key)."""
        with self._transaction() as db:
            db.execute(api_keys.insert(), [account_row(api_keys, record)])

    def key_hashed(self, key_hash: str) -> dict | None:
        """The API key with this hash, or None."""
        return self._account_row(api_keys, api_keys.c.key_hash == key_hash)

    def keys_of(self, user_id: str) -> list[dict]:
        """An account's API keys, oldest first."""
        return self._account_rows(api_keys, api_keys.c.user_id == user_id)

    def delete_key(self, key_id: str) -> dict | None:
        """Remove an API key and return its record, or None if there is none."""
        with self._transaction() as db:
            found = db.execute(sa.select(*account_columns(api_keys)).where(api_keys.c.key_id == key_id)
                               ).mappings().first()
            # No DELETE ... RETURNING (SQLite before 3.35 lacks it); the rowcount tells, of two requests
            # revoking the same key at once, the one that came second.
            if found is None or db.execute(api_keys.delete().where(api_keys.c.key_id == key_id)).rowcount == 0:
                return None
            return account_record(api_keys, found)

    def touch_key(self, key_id: str, when: str) -> None:
        """Note when an API key was last used (nothing happens if it was revoked meanwhile)."""
        with self._transaction() as db:
            db.execute(api_keys.update().where(api_keys.c.key_id == key_id).values(last_used_at=when))

    def add_session(self, record: dict) -> None:
        """Keep a new sign-in session's record (a hash of its token, never the token)."""
        with self._transaction() as db:
            db.execute(sessions.insert(), [account_row(sessions, record)])

    def session_hashed(self, session_hash: str) -> dict | None:
        """The sign-in session with this hash, or None."""
        return self._account_row(sessions, sessions.c.session_hash == session_hash)

    def delete_session(self, session_hash: str) -> None:
        """End a sign-in session (nothing happens if it has ended already)."""
        with self._transaction() as db:
            db.execute(sessions.delete().where(sessions.c.session_hash == session_hash))

    def claim(self, user_id: str) -> dict:
        """Give every image and generation whose owner is no account to this account (and the questions asked in
        sessions of no account); count the images and generations."""
        accounts = sa.select(users.c.user_id).scalar_subquery()
        claimed = {}
        with self._transaction() as db:  # both kinds or neither
            for kind, table in TABLES.items():
                unowned = table.update().where(table.c.owner.not_in(accounts)).values(owner=user_id)
                claimed[kind] = db.execute(unowned).rowcount
            # The questions asked in sessions from before accounts, so that the account still sees its threads.
            db.execute(questions.update().where(questions.c.owner.is_not(None), questions.c.owner.not_in(accounts))
                       .values(owner=user_id))
        return claimed

    def image_with_content(self, owner: str, content_sha256: str) -> dict | None:
        """The owner's newest image whose bytes as sent had this SHA-256, with its thread; None if there is none."""
        with self._connection() as db:
            found = db.execute(sa.select(images).where(images.c.owner == owner,
                                                       images.c.content_sha256 == content_sha256)
                               .order_by(images.c.id.desc()).limit(1)).mappings().first()
            return with_threads(db, [record("images", found)])[0] if found else None

    def generations_since(self, owner: str, since: str) -> int:
        """How many generations the owner made from the time `since` (ISO 8601 in UTC) on."""
        count = (sa.select(sa.func.count()).select_from(generations)
                 .where(generations.c.owner == owner, generations.c.created_at >= since))
        with self._connection() as db:
            return db.execute(count).scalar()

    def key_states(self) -> "SharedKeyStates":
        """The API keys' states kept in this database, for replicas to share."""
        return SharedKeyStates(self)

    def close(self) -> None:
        """Close the database connections."""
        self.engine.dispose()

    @staticmethod
    def _row(db: sa.Connection, kind: str, key: str) -> dict:
        found = db.execute(sa.select(TABLES[kind]).where(KEY_COLUMN[kind] == key)).mappings().first()
        if found is None:
            raise not_found(kind, key)
        return record(kind, found)

    def _account_row(self, table: sa.Table, where) -> dict | None:
        with self._connection() as db:
            found = db.execute(sa.select(*account_columns(table)).where(where)).mappings().first()
            return None if found is None else account_record(table, found)

    def _account_rows(self, table: sa.Table, where) -> list[dict]:
        ordered = sa.select(*account_columns(table)).where(where).order_by(table.c.created_at, table.c.id)
        with self._connection() as db:
            return [account_record(table, found) for found in db.execute(ordered).mappings()]

    @contextmanager
    def _transaction(self):
        with self._errors_told(), self.engine.begin() as db:
            yield db

    @contextmanager
    def _connection(self):
        with self._errors_told(), self.engine.connect() as db:
            yield db

    @contextmanager
    def _errors_told(self):
        """A database fault becomes an error a person can act on; the cause goes to the log."""
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.InternalError) as error:
            log.error("the history database (%s) failed: %s", shown(self.url), reason(error))
            text = reason(error).lower()
            if "full" in text:
                raise InsufficientStorage(f"the disk that holds {SETTING}'s database is full, so nothing was "
                                          "stored: free some space and try again") from None
            if "readonly" in text or "read-only" in text:
                raise StorageReadOnly(f"{SETTING}'s database cannot be written (read-only), so nothing was "
                                      "stored: make it writable and try again") from None
            raise DatabaseUnavailable("the history database did not answer, so nothing was stored or read: try "
                                      "again shortly; the server's log says why") from None


class SharedKeyStates:
    """The API keys' states in the history's database, by the SHA-256 of each key: what every replica sees."""

    def __init__(self, history: SqlHistory):
        self.history = history

    def read(self, key_hashes: list[str]) -> dict[str, dict]:
        """The states known for these keys: {key_hash: {state, until, reason, rate_limits}}."""
        with self.history._connection() as db:
            found = db.execute(sa.select(key_states).where(key_states.c.key_hash.in_(key_hashes))).mappings()
            return {state["key_hash"]: dict(state) for state in found}

    def write(self, key_hash: str, state: dict) -> None:
        """Keep one key's state, replacing what was known of it."""
        insert = dialect_insert(self.history.engine)(key_states).values(key_hash=key_hash, **state)
        with self.history._transaction() as db:
            db.execute(insert.on_conflict_do_update(index_elements=["key_hash"], set_=state))

    def forget_disabled(self, key_hashes: list[str]) -> None:
        """At a start, give disabled keys another chance (a key that is still invalid is disabled again at once)."""
        with self.history._transaction() as db:
            db.execute(key_states.delete().where(key_states.c.key_hash.in_(key_hashes),
                                                 key_states.c.state == "disabled"))


def dialect_insert(engine: sa.Engine):
    """The INSERT of the engine's dialect, which knows ON CONFLICT."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def reason(error: sa.exc.DBAPIError) -> str:
    """The first line of what the database said, without the statement or its values (which hold user text)."""
    return (str(error.orig).strip().splitlines() or [type(error.orig).__name__])[0]


def not_found(kind: str, key: str) -> NotFound:
    noun = "image" if kind == "images" else "generation"
    return NotFound(f"no {noun} with id '{key}': check the id, or list yours with GET /history",
                    code=f"{noun}_not_found")






def account_columns(table: sa.Table) -> list[sa.Column]:
    return [table.c[name] for name in ACCOUNT_FIELDS[table]]


def account_row(table: sa.Table, record: dict) -> dict:
    """An account, key or session record's columns."""
    return {name: record.get(name) for name in ACCOUNT_FIELDS[table]}


def account_record(table: sa.Table, found) -> dict:
    """A row of an account table as the stores hand it out."""
    return {name: found[name] for name in ACCOUNT_FIELDS[table]}


def end_access(db: sa.Connection, user_id: str) -> None:
    """Delete an account's API keys and sign-in sessions (in the caller's transaction)."""
    db.execute(api_keys.delete().where(api_keys.c.user_id == user_id))
    db.execute(sessions.delete().where(sessions.c.user_id == user_id))


def question_row(image_id: str, entry: dict) -> dict:
    return {"image_id": image_id, **{name: entry.get(name) for name in QUESTION_FIELDS}}


def add_questions(db: sa.Connection, image_id: str, entries: list[dict]) -> None:
    if entries:
        db.execute(questions.insert(), [question_row(image_id, entry) for entry in entries])


def with_threads(db: sa.Connection, records: list[dict]) -> list[dict]:
    """Image records with their questions, oldest first, read in one query."""
    threads: dict[str, list] = {one["image_id"]: [] for one in records}
    ids = list(threads)
    for start in range(0, len(ids), CHUNK):
        asked = (sa.select(questions).where(questions.c.image_id.in_(ids[start : start + CHUNK]))
                 .order_by(questions.c.id))
        for entry in db.execute(asked).mappings():
            shown_entry = {name: entry[name] for name in QUESTION_FIELDS if entry[name] is not None}
            threads[entry["image_id"]].append(shown_entry)
    for one in records:
        one["questions"] = threads[one["image_id"]]
    return records

