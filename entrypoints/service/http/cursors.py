"""Meetings cursors: a page's last keyset, signed so that only cursors issued here come back."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from domain.secret import Secret

# A keyset: the (start_time, id) of the last meeting on a page; ListMeetings' `after`.
Keyset = tuple[datetime | None, str]

MAX_CURSOR_LENGTH: Final = 512
_ALPHABET: Final = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_MAC_SIZE: Final = 16  # HMAC-SHA256 cut to 128 bits: forging one is a 2^128 guess per request
_KEY_CONTEXT: Final = b"calendly-connect/meetings-cursor/v1"
# Another context for a key derived from the token encryption key (when there is no JWT
# secret): the derived key says nothing about that key, and never equals any other use of it.
_ENCRYPTION_KEY_CONTEXT: Final = b"calendly-connect/meetings-cursor/from-token-encryption-key/v1"
# Keys of other lists' cursors (`derived`) are derived from this one under this context.
_PURPOSE_CONTEXT: Final = b"calendly-connect/cursor-purpose/v1:"
_UUID_TEXT_LENGTH: Final = 36
_WireKeyset = tuple[
    Annotated[datetime, Meta(tz=True)] | None,
    Annotated[str, Meta(min_length=_UUID_TEXT_LENGTH, max_length=_UUID_TEXT_LENGTH)],
]


class InvalidCursor(ValueError):
    """The cursor was not issued by this service (or was altered)."""


def checked_keyset(start: datetime | None, meeting_id: str) -> Keyset:
    """The keyset in the one form the database is asked with; raises InvalidCursor otherwise.

    The id must be a UUID in its canonical text (what Postgres' `id::text` gives), the time
    aware and expressible in UTC: nothing that could fail a cast or a comparison in SQL.
    """
    if not isinstance(meeting_id, str):
        raise InvalidCursor("the cursor names no meeting")
    try:
        canonical = str(uuid.UUID(meeting_id))
    except ValueError as exc:
        raise InvalidCursor("the cursor names no meeting") from exc
    if canonical != meeting_id:
        raise InvalidCursor("the cursor names no meeting")
    if start is None:
        return (None, meeting_id)
    if not isinstance(start, datetime) or start.utcoffset() is None:
        raise InvalidCursor("the cursor's time has no UTC offset")
    try:
        return (start.astimezone(UTC), meeting_id)
    except (OverflowError, ValueError) as exc:
        raise InvalidCursor("the cursor's time is out of range") from exc


class MeetingCursors:
    """Issues and reads the opaque `cursor` of `GET /api/meetings`.

    A cursor is base64url(MAC || JSON keyset), the MAC an HMAC-SHA256 of the JSON under a key
    only the service processes hold, so a cursor the service did not issue (or one altered) is
    refused before anything in it is used; what it carries is then checked again in full.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < hashlib.sha256().digest_size:
            raise ValueError("a cursor key has at least 32 bytes")
        self._key = key

    @classmethod
    def derived_from(cls, secret: Secret) -> MeetingCursors:
        """Cursors keyed by a key derived from `secret` (the JWT secret all processes share).

        Whoever holds that secret can already mint any user's token, so it gains nothing from
        minting cursors; a new secret makes old cursors answer 400, and the page starts over.
        """
        key = hmac.new(secret.reveal().encode("utf-8"), _KEY_CONTEXT, hashlib.sha256).digest()
        return cls(key)

    @staticmethod
    def key_from_encryption_key(key: bytes) -> bytes:
        """A cursor key derived from the active token encryption key (JWKS-only set-ups).

        Every service process holds that key; a new active key makes old cursors answer 400.
        """
        return hmac.new(key, _ENCRYPTION_KEY_CONTEXT, hashlib.sha256).digest()

    def derived(self, purpose: str) -> MeetingCursors:
        """Cursors of the same shape (a time and a UUID) for another list, under a key of its
        own: a cursor of one list is refused by the other (`purpose` names the list)."""
        context = _PURPOSE_CONTEXT + purpose.encode("utf-8")
        return MeetingCursors(hmac.new(self._key, context, hashlib.sha256).digest())

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_SIZE]

    def encode(self, keyset: Keyset) -> str:
        """The cursor for `keyset`; raises InvalidCursor for a keyset `decode` would refuse."""
        payload = msgspec.json.encode(checked_keyset(*keyset))
        return base64.urlsafe_b64encode(self._mac(payload) + payload).rstrip(b"=").decode("ascii")

    def decode(self, cursor: str) -> Keyset:
        """The keyset inside a cursor issued here; raises InvalidCursor for anything else."""
        if not 0 < len(cursor) <= MAX_CURSOR_LENGTH or not _ALPHABET.fullmatch(cursor):
            raise InvalidCursor("the cursor is not one this service issued")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError) as exc:
            raise InvalidCursor("the cursor is not one this service issued") from exc
        mac, payload = raw[:_MAC_SIZE], raw[_MAC_SIZE:]
        if len(mac) != _MAC_SIZE or not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidCursor("the cursor is not one this service issued")
        try:
            start, meeting_id = msgspec.json.decode(payload, type=_WireKeyset)
        except msgspec.DecodeError as exc:  # ValidationError is one: a shape never issued
            raise InvalidCursor("the cursor is not one this service issued") from exc
        return checked_keyset(start, meeting_id)
