"""The history store: one JSON file, changed atomically under a lock that holds across processes."""

import copy
import fcntl
import glob
import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager

from errors import NotFound

log = logging.getLogger(__name__)

KINDS = ("images", "generations")


def empty() -> dict:
    """A history with nothing in it."""
    return {kind: {} for kind in KINDS}


def file_stamp(stat: os.stat_result) -> tuple:
    """What changes whenever the file is replaced: a new inode, time or size."""
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class History:
    """Images with their questions, and generations, keyed by id in insertion order."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.folder = os.path.dirname(self.path)
        self.temporary_prefix = f".{os.path.basename(self.path)}.tmp-"
        self._cache = (None, empty())  # (stamp of the file, its parsed content), swapped whole
        os.makedirs(self.folder, exist_ok=True)
        with self._locked():
            self._recover()

    def add_image(self, record: dict) -> None:
        """Keep a new image record."""
        self._change(lambda data: data["images"].__setitem__(record["image_id"], record))

    def add_question(self, image_id: str, entry: dict) -> dict:
        """Append a question and its answer to an image's thread; return the updated record."""

        def append(data):
            self._find(data, "images", image_id)["questions"].append(entry)
            return data["images"][image_id]

        return copy.deepcopy(self._change(append))

    def add_generation(self, record: dict) -> None:
        """Keep a new generation record."""
        self._change(lambda data: data["generations"].__setitem__(record["generation_id"], record))

    def image(self, image_id: str) -> dict:
        """One image record; NotFound if there is none."""
        return copy.deepcopy(self._find(self._read(), "images", image_id))

    def generation(self, generation_id: str) -> dict:
        """One generation record; NotFound if there is none."""
        return copy.deepcopy(self._find(self._read(), "generations", generation_id))

    def list(self, kind: str, owner: str, limit: int, offset: int) -> tuple[list[dict], int]:
        """An owner's records of one kind, newest first, one page of them, and how many in all."""
        mine = [record for record in self._read()[kind].values() if record.get("owner") == owner]
        mine.reverse()
        return copy.deepcopy(mine[offset : offset + limit]), len(mine)

    @staticmethod
    def _find(data: dict, kind: str, key: str) -> dict:
        try:
            return data[kind][key]
        except KeyError:
            noun = "image" if kind == "images" else "generation"
            raise NotFound(
                f"no {noun} with id '{key}': check the id, or list yours with GET /history",
                code=f"{noun}_not_found",
            ) from None

    def _read(self) -> dict:
        # Writers replace the file atomically, so a reader needs no lock: it sees the old
        # file or the new one, never half of one.
        try:
            stamp = file_stamp(os.stat(self.path))
        except FileNotFoundError:
            return empty()
        cached_stamp, data = self._cache
        if stamp != cached_stamp:
            with open(self.path, encoding="utf-8") as file:
                stamp = file_stamp(os.fstat(file.fileno()))
                data = json.load(file)
            self._cache = (stamp, data)
        return data

    def _change(self, change):
        """Read the newest file, apply change, write the result back; all under the lock."""
        with self._locked():
            data = copy.deepcopy(self._read())
            result = change(data)
            self._write(data)
            return result

    @contextmanager
    def _locked(self):
        # flock on a file opened per call excludes other threads as well as other processes.
        with open(self.path + ".lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _write(self, data: dict) -> None:
        descriptor, temporary = tempfile.mkstemp(prefix=self.temporary_prefix, dir=self.folder)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                json.dump(data, file, ensure_ascii=False, indent=1)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            os.unlink(temporary)
            raise
        self._cache = (file_stamp(os.stat(self.path)), data)
        folder = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def _recover(self) -> None:
        """At start: remove temporary files a crash left, move an unreadable file aside."""
        for leftover in glob.glob(os.path.join(glob.escape(self.folder), self.temporary_prefix + "*")):
            os.unlink(leftover)
        try:
            data = self._read()
            if not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in KINDS):
                raise ValueError("not a history object")
        except (ValueError, UnicodeDecodeError) as error:
            aside = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
            os.replace(self.path, aside)
            log.warning("history file %s could not be read (%s); moved it to %s and started empty",
                        self.path, error, aside)
            self._cache = (None, empty())
