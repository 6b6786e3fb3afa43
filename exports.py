"""A captioned folder as a training set: kohya-style .txt files, a metadata.jsonl, or a CSV.

The three layouts the training tools read:
- txt: a `<stem>.txt` beside each image, in the same sub-folder, one caption in UTF-8 (kohya_ss's sd-scripts,
  OneTrainer, SD.Next);
- jsonl: one `metadata.jsonl` with `{"file_name", "text"}` a line, as Hugging Face datasets' ImageFolder reads it
  (https://huggingface.co/docs/datasets/image_dataset#imagefolder);
- csv: `file_name,caption` with a header row.
Rows are (file_name, caption) pairs: the path relative to the folder with "/" between parts, and the caption
as it should be written (prefix and suffix included, see full_caption). No Flask, no models inside.
"""

import csv
import io
import json
import posixpath
import zipfile
from typing import Iterable

FORMATS = ("txt", "jsonl", "csv")
JSONL_NAME = "metadata.jsonl"
CSV_NAME = "metadata.csv"


def full_caption(caption: str, prefix: str | None = None, suffix: str | None = None) -> str:
    """The caption with a prefix (a trigger word, say) before it and a suffix after it, each joined by one space;
    the caller's own punctuation is kept, so prefix "sks," gives "sks, a dog on a sofa"."""
    return " ".join(part for part in (prefix, caption, suffix) if part)


def affix_problem(value: str) -> str | None:
    """Why a prefix or suffix cannot go into a caption: a line break or another control character (training tools
    read a caption file's first line only); None when it can."""
    if any(character in value for character in "\r\n\x0b\x0c\x85\u2028\u2029"):
        return "holds a line break, and a caption is one line (training tools read only a caption file's first)"
    if any(ord(character) < 32 or ord(character) == 127 for character in value):
        return "holds a control character"
    return None


def text_file_names(file_names: Iterable[str]) -> dict[str, str]:
    """Each image's caption file: `<stem>.txt` in the same folder; when that is taken (a.png and a.jpg, or
    A.png and a.png on a file system that ignores case), `<name>.txt` (a.jpg.txt), then `<name>-2.txt` and so
    on, so that no caption overwrites another wherever the files are unpacked."""
    taken: set[str] = set()
    names = {}
    for file_name in file_names:
        stem = posixpath.splitext(file_name)[0]
        candidates = [stem + ".txt", file_name + ".txt"]
        candidates += (f"{file_name}-{number}.txt" for number in range(2, len(taken) + 3))
        chosen = next(name for name in candidates if name.casefold() not in taken)
        taken.add(chosen.casefold())
        names[file_name] = chosen
    return names


def txt_archive(rows: list[tuple[str, str]]) -> bytes:
    """A ZIP of one `<stem>.txt` a row, in the rows' sub-folders (deflated)."""
    buffer = io.BytesIO()
    names = text_file_names(file_name for file_name, _ in rows)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file_name, caption in rows:
            archive.writestr(names[file_name], caption.encode("utf-8"))
    return buffer.getvalue()


def jsonl_text(rows: Iterable[tuple[str, str]]) -> str:
    """metadata.jsonl: `{"file_name": ..., "text": ...}` a line, non-ASCII kept as it is."""
    return "".join(json.dumps({"file_name": file_name, "text": caption}, ensure_ascii=False) + "\n"
                   for file_name, caption in rows)


def csv_text(rows: Iterable[tuple[str, str]]) -> str:
    """A CSV with the header `file_name,caption` and a row an image (quoted where needed, lines ending CRLF as
    RFC 4180 has them)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(("file_name", "caption"))
    writer.writerows(rows)
    return buffer.getvalue()
