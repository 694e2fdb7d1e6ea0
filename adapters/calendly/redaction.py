"""Credentials removed from what Calendly answered, by their names and by the values we sent."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec

from domain.secret import REDACTED, Secret
from domain.secret_names import is_secret_name

# A logged non-JSON body (an HTML error page, say) is cut to this many characters.
MAX_LOGGED_TEXT: Final = 2000


def redact(value: object) -> object:
    """A copy of a decoded JSON value with every credential-named key's value replaced."""
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and is_secret_name(k) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def scrub(value: object, secrets: Iterable[Secret]) -> object:
    """Replace the values of `secrets` wherever they occur in strings inside `value`."""
    known = [s.reveal() for s in secrets if s]
    if not known:
        return value

    def walk(v: object) -> object:
        if isinstance(v, str):
            for k in known:
                v = v.replace(k, REDACTED)
            return v
        if isinstance(v, dict):
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(value)


def readable_body(raw: bytes, secrets: Iterable[Secret]) -> object:
    """A body, decoded if it is JSON (else cut text), without credentials or `secrets`."""
    try:
        decoded: object = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        decoded = raw[:MAX_LOGGED_TEXT].decode("utf-8", "replace")
    return scrub(redact(decoded), secrets)


__all__ = ["MAX_LOGGED_TEXT", "readable_body", "redact", "scrub"]
