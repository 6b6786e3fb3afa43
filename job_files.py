"""A batch job's files as they arrive: many files from a multipart form, or one ZIP, staged on disk item by item.

Each file is written to JOBS_FOLDER/<job_id>/<position> under a name of the app's own; the name it came
with is only kept as text (file_name), after checking it is a safe relative path: no absolute path, no
drive, no `..`, nothing hidden, no control characters (OWASP's "Path Traversal" and zip-slip, CWE-22).
A ZIP is read with the standard library's zipfile, entry by entry, never extracted by its own names; it is
refused with 413 past JOB_MAX_FILES entries or past JOB_MAX_MB of content, counted as it is decompressed
(so a zip bomb's declared sizes cannot lie its way in, OWASP's "File Upload Cheat Sheet"). Entries that are
not images (by extension and content) are skipped and listed with a reason; an image larger than
MAX_IMAGE_BYTES becomes an item that failed. No Flask inside: the caller passes the limits, and removes the
job's folder when staging raises.
"""

from __future__ import annotations

import os
import posixpath
import stat
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

import images
from errors import ImageTooLarge, InvalidInput
from field_checks import NOT_IN_NAMES, given_name

CHUNK = 1 << 20
MAX_NAME = 1000  # characters of a file's path inside the job
MAX_SKIPPED_LISTED = 100
MAX_SKIPPED_NAME = 200


@dataclass
class Limits:
    """What one job may hold: files, bytes in all (as decompressed), bytes an image."""

    max_files: int
    max_bytes: int
    max_image_bytes: int


@dataclass
class Staged:
    """The items written so far, and the entries skipped, in the order they came."""

    folder: str
    items: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    names: set[str] = field(default_factory=set)  # the file names taken, for telling a repeated one
    skipped_count: int = 0
    bytes: int = 0


def safe_name(name: str) -> str | None:
    """A file's path as the job keeps it ("/" between parts), or None when it could lead outside the job or could
    not be unpacked: absolute, a drive, `..` (also as fullwidth dots), a hidden part, a part over 255 bytes,
    control or invisible characters, or empty."""
    name = unicodedata.normalize("NFC", name.replace("\\", "/"))
    if not name or len(name) > MAX_NAME or NOT_IN_NAMES.search(name) or name.startswith("/"):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or (len(parts[0]) == 2 and parts[0][1] == ":") or any(
            part.startswith(".") or unicodedata.normalize("NFKC", part).startswith(".")  # "．．" is ".." to some
            or len(part.encode("utf-8")) > 255 for part in parts):  # no file system takes a longer name
        return None
    return "/".join(parts)


def looks_like_image(name: str, head: bytes) -> bool:
    """Whether an entry is an image by its extension, or else by its first bytes."""
    return posixpath.splitext(name)[1].lower() in images.IMAGE_EXTENSIONS or images.sniff(head) is not None


def stage_files(files: list, folder: str, limits: Limits) -> Staged:
    """Stage the files of a multipart form (werkzeug FileStorage), each named by its filename (a path for a folder).

    Raises ImageTooLarge (413) past the limits; InvalidInput when no file was an image.
    """
    if len(files) > limits.max_files:
        raise too_many_files(len(files), limits.max_files)
    staged = start(folder)
    for number, sent in enumerate(files, 1):
        given = given_name(sent) or f"image-{number}"  # RFC 6266's filename* first, as uploads read it
        stage_one(staged, given, sent.stream, limits)
    return finished(staged)


def stage_archive(archive: BinaryIO, folder: str, limits: Limits) -> Staged:
    """Stage the image entries of a ZIP, its sub-folders kept in file_name.

    Raises InvalidInput (not a ZIP, no image in it), ImageTooLarge (413: too many entries, too many bytes).
    """
    try:
        with zipfile.ZipFile(archive) as opened:
            entries = opened.infolist()
            if len(entries) > limits.max_files:
                raise too_many_files(len(entries), limits.max_files)
            staged = start(folder)
            for entry in entries:
                stage_entry(staged, opened, entry, limits)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as error:
        raise InvalidInput(f"the archive cannot be read as a ZIP ({error}): send a .zip file made by a usual tool",
                           code="invalid_archive") from None
    return finished(staged)


def stage_entry(staged: Staged, opened: zipfile.ZipFile, entry: zipfile.ZipInfo, limits: Limits) -> None:
    """Stage one ZIP entry, or list it as skipped."""
    if entry.is_dir():
        return
    name = entry_name(entry)
    kind = stat.S_IFMT(entry.external_attr >> 16)
    if kind and kind != stat.S_IFREG:
        return skip(staged, name, "not a regular file (a link or a device)")
    if entry.flag_bits & 0x1:
        return skip(staged, name, "encrypted")
    if name.startswith("__MACOSX/"):
        return skip(staged, name, "macOS resource data, not an image")
    try:
        with opened.open(entry) as stream:
            stage_one(staged, name, stream, limits)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error) as error:  # stage_one kept nothing
        skip(staged, name, f"damaged in the archive ({error})")


def entry_name(entry: zipfile.ZipInfo) -> str:
    """An entry's path as its maker meant it: UTF-8 where the ZIP flags it (bit 11), and where it does not but the
    bytes are UTF-8 all the same (Info-ZIP's zip and macOS's Archive Utility write UTF-8 without the flag;
    zipfile then reads the bytes as CP437, as the format's first specification says)."""
    if entry.flag_bits & 0x800:
        return entry.filename
    try:
        return entry.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return entry.filename


def stage_one(staged: Staged, given: str, stream: BinaryIO, limits: Limits) -> None:
    """Write one file to the stage as the next item, copying at most the image limit (+1, to tell it is over)."""
    name = safe_name(given)
    if name is None:
        return skip(staged, given, "its path is absolute, leads outside the folder (..), or is hidden")
    if name in staged.names:
        return skip(staged, name, "the same path came twice; the first was kept")
    head = stream.read(images.HEAD_BYTES)  # all that is read of an entry that is skipped
    if not looks_like_image(name, head):
        return skip(staged, name, "not an image")
    position = len(staged.items)
    path = os.path.join(staged.folder, str(position))
    size = 0
    try:
        with open(path, "wb") as file:
            chunk = head
            while chunk:
                size += len(chunk)
                staged.bytes += len(chunk)
                if staged.bytes > limits.max_bytes:
                    raise too_many_bytes(limits.max_bytes)
                if size > limits.max_image_bytes:
                    break
                file.write(chunk)
                chunk = stream.read(CHUNK)
            file.flush()
            os.fsync(file.fileno())  # the job's record, written next, points to it: it must outlive a crash
    except BaseException:  # a damaged entry, a limit: no half-written file stays
        os.unlink(path)
        raise
    item = {"position": position, "file_name": name, "staged": str(position), "state": "pending"}
    if size > limits.max_image_bytes:
        os.unlink(path)
        item.update(state="failed", error=images.too_many_bytes(limits.max_image_bytes).message)
    staged.items.append(item)
    staged.names.add(name)


def skip(staged: Staged, name: str, reason: str) -> None:
    """List an entry as skipped: the first MAX_SKIPPED_LISTED, each name cut to MAX_SKIPPED_NAME characters;
    the others only counted (a job's record is read at every poll)."""
    staged.skipped_count += 1
    if len(staged.skipped) < MAX_SKIPPED_LISTED:
        staged.skipped.append({"file_name": name[:MAX_SKIPPED_NAME], "reason": reason})


def start(folder: str) -> Staged:
    os.makedirs(folder)
    return Staged(folder)


def finished(staged: Staged) -> Staged:
    """The stage, durable; InvalidInput when it holds no image."""
    if not staged.items:
        listed = "; ".join(f"{one['file_name']}: {one['reason']}" for one in staged.skipped[:5])
        raise InvalidInput("no image came with the job" + (f" ({listed})" if listed else "") +
                           ": send PNG or JPEG files in the field 'images', or a ZIP of them in 'archive'",
                           code="no_images")
    descriptor = os.open(staged.folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return staged


def too_many_files(count: int | str, limit: int) -> ImageTooLarge:
    return ImageTooLarge(f"the job holds {count} files; a job may hold {limit} (JOB_MAX_FILES): split the folder "
                         "into several jobs", code="too_many_files")


def too_many_bytes(limit: int) -> ImageTooLarge:
    return ImageTooLarge(f"the job's files come to more than {limit // 2**20} MB (JOB_MAX_MB), counted as they are "
                         "decompressed: split the folder into several jobs", code="job_too_large")

