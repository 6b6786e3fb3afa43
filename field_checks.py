"""Reading request fields (form or JSON) into checked values; a bad one is a 400 naming it."""

import re

from errors import InvalidInput

# Lone surrogates cannot be stored as UTF-8; control characters (but tab and newlines) are never text.
NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# Only ASCII digits: Python's int() and float() would take '٣', '1_000', 'nan' and 'inf' too.
WHOLE = re.compile(r"[+-]?[0-9]+")
DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def text(fields, name: str, *, max_length: int, required: bool = True) -> str | None:
    """A stripped, non-blank string of at most max_length characters (None if optional and absent)."""
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
    value = value.strip()
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
