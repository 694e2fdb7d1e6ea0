"""API keys of the server API (`/v1`): what one is, how it looks, how it is stored (DR-30)."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from enum import StrEnum
from typing import Final

import msgspec

# A key is `ccsk_` and the URL-safe base64 of at least 32 random bytes (43 characters and up).
KEY_PREFIX: Final = "ccsk_"
KEY_BYTES: Final = 32
# How many characters after `ccsk_` are kept in clear to name a key in lists (48 of its bits).
SHOWN_LENGTH: Final = 8
MAX_NAME_LENGTH: Final = 100
_KEY: Final = re.compile(rf"{KEY_PREFIX}[A-Za-z0-9_-]{{43,128}}", re.ASCII)
_SHOWN: Final = re.compile(rf"(?:{KEY_PREFIX})?([A-Za-z0-9_-]{{{SHOWN_LENGTH}}})", re.ASCII)


class ApiKeyScope(StrEnum):
    """`read` lists and reads; `write` also disconnects, erases and opens user sessions."""

    READ = "read"
    WRITE = "write"

    def allows(self, needed: ApiKeyScope) -> bool:
        return self is ApiKeyScope.WRITE or needed is ApiKeyScope.READ


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key as stored: never the key itself, only its digest (kept by the store) and prefix."""

    id: str
    name: str
    # The first SHOWN_LENGTH characters after `ccsk_`: not secret, unique, names the key.
    prefix: str
    scope: ApiKeyScope
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def shown(self) -> str:
        """How lists and logs name the key: `ccsk_AbCdEfGh`."""
        return KEY_PREFIX + self.prefix


def is_well_formed(presented: str) -> bool:
    """Whether `presented` could be a key this service issued (checked before any lookup)."""
    return _KEY.fullmatch(presented) is not None


def digest(presented: str) -> bytes:
    """What the store keeps and looks a key up by: SHA-256 of the whole key.

    A key carries 256 random bits, so no guess can find a key from its digest, however fast
    the hash: a slow password hash would protect nothing more and would forbid looking the
    digest up in an index (DR-30).
    """
    return hashlib.sha256(presented.encode("ascii")).digest()


def shown_prefix(presented: str) -> str:
    """The part of a new key that stays in clear (the key must be well formed)."""
    return presented[len(KEY_PREFIX) : len(KEY_PREFIX) + SHOWN_LENGTH]


def prefix_in(reference: str) -> str | None:
    """The prefix a reference names (`ccsk_AbCdEfGh` or `AbCdEfGh`), or None."""
    match = _SHOWN.fullmatch(reference)
    return match.group(1) if match else None


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a key, or None."""
    if not name.strip():
        return "the name must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"the name has {len(name)} characters; use at most {MAX_NAME_LENGTH}"
    if not name.isprintable():
        return "the name must not contain control characters"
    return None
