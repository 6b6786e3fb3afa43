"""Stored files on disk: atomic writes, disk faults as errors a person can act on, and the sweep after a crash.

A disk fault never leaves half a file: a file is written under a temporary name and renamed into
place, and a full disk (507) or a read-only folder (503) is told by the setting that names the
folder, never by a server path. Stores hold a shared lock on the upload folder's `.files.lock`
from the file to its record; the sweep at start holds it exclusively, so it never takes a file
whose record another worker is about to write for a leftover.
"""

import errno
import fcntl
import logging
import os
import threading
import pwd
import re
import stat
import tempfile
from contextlib import contextmanager

from errors import AppError, InsufficientStorage, SettingError, StorageReadOnly

log = logging.getLogger(__name__)

TEMPORARY_PREFIX = ".incoming-"
LOCK_NAME = ".files.lock"
MIN_FREE_BYTES = 1 << 20  # below this a write is refused before any work is done
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
# The names the app gives stored files: nothing else in the folders is served or swept.
STORED_NAME = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(\.png|\.jpg)")


def fault(error: OSError, setting: str) -> AppError | None:
    """The error a person can act on for a disk fault in the folder a setting names; None for other faults."""
    if error.errno in NO_SPACE:
        return InsufficientStorage(f"the disk that holds {setting} is full, so nothing was stored: free some space "
                                   "and try again")
    if error.errno in NOT_WRITABLE:
        return StorageReadOnly(f"{setting} cannot be written (read-only or not permitted), so nothing was stored: "
                               "make it writable and try again")
    return None


@contextmanager
def faults_told(setting: str, path: str):
    """Turn a disk fault inside the block into its error, logged with the real path."""
    try:
        yield
    except OSError as error:
        problem = fault(error, setting)
        if problem is None:
            raise
        log.error("cannot write %s (%s): %s", path, setting, error.strerror)
        raise problem from error


def check_readable(path: str, setting: str, instead: str = "") -> None:
    """Stop the start when a data file the setting names exists but this process may not read it.

    Raises SettingError naming the setting, the path, the reason and the fix (or `instead`, another
    one); a missing file is fine. Opened without blocking, so that a FIFO in its place cannot hang the start.
    """
    instead = instead or f"set {setting} to another path"
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError as error:
        raise SettingError(f"{setting} {path} cannot be read ({error.strerror}): give the user the app runs as "
                           f"({user_name()}) read and write access to it and its folder (chown or chmod), or {instead}"
                           ) from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise SettingError(f"{setting} {path} is not a file (a folder, a pipe or a device): {instead}")
    finally:
        os.close(descriptor)


def user_name() -> str:
    """Who this process runs as: a user name, or the bare uid of one with no entry (a container's --user N)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def check_writable(folder: str, setting: str) -> None:
    """Refuse before any work (a model or a paid call) when the folder cannot take a file."""
    try:
        stats = os.statvfs(folder)
    except FileNotFoundError:
        return  # made on the first write
    if not os.access(folder, os.W_OK) or stats.f_flag & os.ST_RDONLY:
        raise fault(OSError(errno.EROFS, "read-only"), setting)
    if stats.f_bavail * stats.f_frsize < MIN_FREE_BYTES:
        raise fault(OSError(errno.ENOSPC, "no space"), setting)


def replace_file(path: str, data: bytes, temporary_prefix: str = TEMPORARY_PREFIX) -> None:
    """Write data to path through a temporary file beside it, fsynced, then renamed over it: never half a file."""
    descriptor, temporary = tempfile.mkstemp(prefix=temporary_prefix, dir=os.path.dirname(path))
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def store(folder: str, name: str, data: bytes, setting: str) -> str:
    """Write data to folder/name atomically and durably; return the path."""
    path = os.path.join(folder, name)
    with faults_told(setting, path):
        os.makedirs(folder, exist_ok=True)
        replace_file(path, data)
    return path


def remove(path: str) -> None:
    """Delete a stored file if it is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class KeyedLocks:
    """One lock per key, made while someone holds or waits for it: work that must not run twice at once for the
    same key (in this process) runs once, and work for other keys is not held up."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict = {}  # key -> [lock, how many hold or wait for it]

    @contextmanager
    def holding(self, key):
        """Hold the key's lock for the block."""
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[key]


@contextmanager
def files_locked(upload_folder: str, exclusive: bool, setting: str = "UPLOAD_FOLDER"):
    """The stored files' lock: shared while storing a file and its record, exclusive while sweeping."""
    path = os.path.join(upload_folder, LOCK_NAME)
    with faults_told(setting, path):
        os.makedirs(upload_folder, exist_ok=True)
        lock_file = open(path, "a")
    with lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def sweep(upload_folder: str, folders: list[str], kept: set[str] | None) -> None:
    """Remove what a crash left in the folders: stored files no record points to, and temporary files.

    kept=None (an empty history) keeps every stored file: the history may be new, and the one that
    points to them not copied into it yet.
    """
    try:
        with files_locked(upload_folder, exclusive=True):
            orphans = temporaries = unrecorded = 0
            for folder in dict.fromkeys(folders):
                for name in os.listdir(folder) if os.path.isdir(folder) else []:
                    if name.startswith(TEMPORARY_PREFIX):
                        temporaries += 1
                    elif not STORED_NAME.fullmatch(name) or (kept is not None and name in kept):
                        continue
                    elif kept is None:
                        unrecorded += 1
                        continue
                    else:
                        orphans += 1
                    remove(os.path.join(folder, name))
    except (AppError, OSError) as error:
        log.warning("could not look for files a crash left in %s (%s)", upload_folder, error)
        return
    if unrecorded:
        log.warning("the history has no records, yet the upload folders hold %d stored images: kept them. If the "
                    "history moved to a new store, copy the old one: flask --app app history copy OLD NEW",
                    unrecorded)
    if orphans or temporaries:
        log.warning("removed %d stored files no record points to and %d temporary files, left by a crash",
                    orphans, temporaries)
