"""Meetings cursors: only issued ones are read, and what they carry can never fail in SQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.secret import Secret
from entrypoints.service.http.cursors import InvalidCursor, Keyset, MeetingCursors

KEY = bytes(range(32))
MEETING = "2f1c8f4e-5a3b-4c1d-9e8f-0a1b2c3d4e5f"
cursors = MeetingCursors(KEY)


def signed(payload: bytes, key: bytes = KEY) -> str:
    """A cursor in the documented format (MAC || JSON), made independently of the code."""
    mac = hmac.new(key, payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac + payload).rstrip(b"=").decode()


def assert_well_formed(keyset: Keyset) -> None:
    start, meeting_id = keyset
    assert str(uuid.UUID(meeting_id)) == meeting_id
    assert start is None or start.utcoffset() == timedelta(0)


def test_an_issued_cursor_reads_back_in_utc() -> None:
    start = datetime(2030, 3, 5, 16, 30, tzinfo=timezone(timedelta(hours=2)))

    assert cursors.decode(cursors.encode((start, MEETING))) == (start, MEETING)
    assert cursors.decode(cursors.encode((start, MEETING)))[0].tzinfo is UTC  # type: ignore[union-attr]
    assert cursors.decode(cursors.encode((None, MEETING))) == (None, MEETING)


def test_a_cursor_issued_under_another_key_is_refused() -> None:
    other = MeetingCursors.derived_from(Secret("another-jwt-secret-of-at-least-32-characters"))

    with pytest.raises(InvalidCursor):
        cursors.decode(other.encode((None, MEETING)))


@pytest.mark.parametrize(
    "keyset",
    [
        [None, "x"],
        [None, ""],
        [None, MEETING.upper()],
        [None, "{" + MEETING + "}"],
        [None, MEETING.replace("-", "")],
        [None, "\u0000" * 36],
        [None, MEETING, "extra"],
        [None],
        ["2030-01-01T00:00:00", MEETING],
        ["0001-01-01T00:00:00+14:00", MEETING],
        ["9999-12-31T23:59:59-14:00", MEETING],
        ["infinity", MEETING],
        [1_900_000_000, MEETING],
        {"start": None, "id": MEETING},
    ],
)
def test_a_signed_cursor_in_a_shape_never_issued_is_refused(keyset: object) -> None:
    with pytest.raises(InvalidCursor):
        cursors.decode(signed(json.dumps(keyset).encode()))


def test_a_keyset_it_could_not_read_back_is_never_issued() -> None:
    with pytest.raises(InvalidCursor):
        cursors.encode((None, "m1"))
    with pytest.raises(InvalidCursor):
        cursors.encode((datetime(2030, 1, 1), MEETING))  # naive: no offset to order by


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        MeetingCursors(b"short")


@given(st.text(max_size=700))
def test_any_text_is_a_clean_refusal_or_a_well_formed_keyset(cursor: str) -> None:
    try:
        keyset = cursors.decode(cursor)
    except InvalidCursor:
        return
    assert_well_formed(keyset)


@given(st.one_of(st.binary(max_size=120), st.tuples(st.one_of(st.none(), st.text()), st.text())))
def test_anything_signed_is_a_clean_refusal_or_a_well_formed_keyset(
    content: bytes | tuple[str | None, str],
) -> None:
    payload = content if isinstance(content, bytes) else json.dumps(list(content)).encode()
    try:
        keyset = cursors.decode(signed(payload))
    except InvalidCursor:
        return
    assert_well_formed(keyset)
