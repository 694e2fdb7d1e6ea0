"""Text as Postgres can store it: no NUL characters, no lone surrogates (RELIABILITY row 31)."""

from __future__ import annotations

import re
from typing import Final

# Surrogate code points never stand alone in valid UTF-8, so UTF-8 cannot encode them.
_SURROGATES: Final = re.compile("[\ud800-\udfff]")
REPLACEMENT: Final = "\ufffd"


def storable(text: str) -> str:
    """`text` without NUL characters and with each lone surrogate replaced by U+FFFD.

    Postgres' text and jsonb refuse NUL (`\\u0000`), and psycopg cannot encode a surrogate
    as UTF-8: either would fail the statement, and then every retry of it. Anything else
    passes unchanged.
    """
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():
        text = _SURROGATES.sub(REPLACEMENT, text)
    return text


def storable_or_none(text: str | None) -> str | None:
    return None if text is None else storable(text)


def storable_json(value: object) -> object:
    """A decoded JSON value (dicts, lists, scalars) with every string and key made storable."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {
            storable(k) if isinstance(k, str) else k: storable_json(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [storable_json(item) for item in value]
    return value
