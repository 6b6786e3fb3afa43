"""Reading request fields (form or JSON) into checked values; a bad one is a 400 naming it."""

import os
import re
import unicodedata
from email.message import Message

import regex

from errors import InvalidInput

# Lone surrogates cannot be stored as UTF-8; control characters (but tab and newlines) are never text.
NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# Only ASCII digits: Python's int() and float() would take '٣', '1_000', 'nan' and 'inf' too.
WHOLE = re.compile(r"[+-]?[0-9]+")
DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# What a name may not hold: controls (tab and newlines too), line separators, lone surrogates, and the invisible
# characters Unicode calls default-ignorable (zero-width spaces, soft hyphens, fillers, bidi controls: an override shows
# "photo\u202egpj.exe" as "photoexe.jpg", the Trojan Source kind, CVE-2021-42574), but those that join or select
# (ZWJ, ZWNJ, variation selectors, emoji tags), which emoji and some scripts need.
NOT_IN_NAMES = regex.compile(r"[[\p{Cc}\p{Cs}\p{Zl}\p{Zp}\p{Default_Ignorable_Code_Point}]--[\u200c\u200d\ufe00-\ufe0f"
                             r"\U000e0020-\U000e007f\U000e0100-\U000e01ef]]", regex.VERSION1)
# Something a person can see: not a space, not default-ignorable, not the Braille blank.
VISIBLE = regex.compile(r"[^\s\p{Default_Ignorable_Code_Point}\u2800]")
MAX_FILE_NAME = 100


def text(fields, name: str, *, max_length: int, required: bool = True, strip: bool = True) -> str | None:
    """A non-blank string of at most max_length characters, stripped unless strip is False (a password's spaces
    are part of it); None if optional and absent."""
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidInput(f"'{name}' is missing or blank: send it as a form field or in a JSON body",
                               code=f"missing_{name}")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"'{name}' must be text", code=f"invalid_{name}")
    if NOT_TEXT.search(value):
        raise InvalidInput(f"'{name}' holds characters that are not text (a control character or a lone "
                           "surrogate): remove them and send it again", code=f"invalid_{name}")
    value = value.strip() if strip else value
    if len(value) > max_length:
        raise InvalidInput(f"'{name}' is {len(value)} characters long; the limit is {max_length}: shorten it",
                           code=f"{name}_too_long")
    return value


def number(fields, name: str, *, low, high, kind=int, multiple_of: int = 1, default=None):
    """An int (or float) from low to high, optionally a multiple of multiple_of; default if absent."""
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    noun = "a whole number" if kind is int else "a number"
    rule = f"{noun} from {low} to {high}" + (f", a multiple of {multiple_of}" if multiple_of > 1 else "")
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        if isinstance(value, str):
            value = value.strip()
            if not (WHOLE if kind is int else DECIMAL).fullmatch(value):
                raise ValueError(value)
        parsed = kind(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"'{name}' must be {rule}", code=f"invalid_{name}") from None
    if not low <= parsed <= high or (multiple_of > 1 and parsed % multiple_of):
        raise InvalidInput(f"'{name}' is {parsed}; it must be {rule}", code=f"invalid_{name}")
    return parsed


def file_name(file) -> str | None:
    """The name a person gave an uploaded file (a werkzeug FileStorage), fit to show and keep.

    Any script, Unicode-normalised (NFC); no folders, control characters, bidi overrides or other
    invisible characters; at most MAX_FILE_NAME characters, cut between user-perceived characters
    (Unicode's grapheme clusters: a flag, an emoji family, a conjunct stay whole), an extension of up
    to 10 characters kept; None when nothing visible is left.
    """
    name = unicodedata.normalize("NFC", given_name(file))
    name = NOT_IN_NAMES.sub("", re.split(r"[/\\]", name)[-1]).strip()
    if name in (".", "..") or not VISIBLE.search(name):
        return None
    if len(name) > MAX_FILE_NAME:
        stem, extension = os.path.splitext(name)
        extension = extension if len(extension) <= 10 else ""
        name = whole_characters(stem, MAX_FILE_NAME - len(extension)).rstrip() + extension
    return name


def given_name(file) -> str:
    """The name in the part's Content-Disposition: RFC 2231's `filename*=` when it decodes, else `filename=`.

    RFC 6266 (4.3) has filename* win over filename, whichever comes first; the standard library's email
    parser reads the parameters (quotes and RFC 2231 included) without merging the two as werkzeug does.
    """
    message = Message()
    message["Content-Disposition"] = file.headers.get("Content-Disposition", "")
    names = [value for key, value in message.get_params([], header="content-disposition") if key == "filename"]
    if not names:
        return file.filename or ""  # a header this parser cannot read: werkzeug's reading of it
    for value in names:
        if not isinstance(value, tuple):
            continue
        charset, _, text = value  # text: the percent-decoded bytes, as Latin-1
        try:
            extended = text.encode("latin-1").decode(charset or "utf-8")
        except (LookupError, ValueError):  # a charset Python does not know, or bytes it cannot decode
            continue
        if extended:
            return extended
    return next((value for value in names if not isinstance(value, tuple)), "")


def whole_characters(text: str, limit: int) -> str:
    """The longest start of text of at most limit code points that ends between grapheme clusters."""
    kept, length = [], 0
    for cluster in regex.findall(r"\X", text):
        if length + len(cluster) > limit:
            break
        kept.append(cluster)
        length += len(cluster)
    return "".join(kept)
