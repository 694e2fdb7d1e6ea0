"""Calendly's webhook signature: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t." + raw body>`."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from datetime import datetime, timedelta

import msgspec

from .errors import InvalidSignature
from .secret import Secret

MAX_HEADER_LENGTH = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGITS = re.compile(r"[0-9]{1,12}")


class SignatureHeader(msgspec.Struct, frozen=True):
    timestamp: int
    signatures: tuple[str, ...]


def parse_signature_header(value: str | None) -> SignatureHeader:
    """Parse the header strictly; raises InvalidSignature saying what is wrong."""
    if value is None or not value.strip():
        raise InvalidSignature("the Calendly-Webhook-Signature header is missing")
    if len(value) > MAX_HEADER_LENGTH:
        raise InvalidSignature("the signature header is too long")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in value.split(","):
        key, sep, item = part.strip().partition("=")
        if not sep:
            raise InvalidSignature("the signature header is malformed")
        if key == "t":
            if timestamp is not None:
                raise InvalidSignature("the signature header has more than one timestamp")
            if not _DIGITS.fullmatch(item):
                raise InvalidSignature("the signature timestamp is not a number")
            timestamp = int(item)
        elif key == "v1":
            if not _HEX64.fullmatch(item):
                raise InvalidSignature("the v1 signature is not 64 lowercase hex digits")
            signatures.append(item)
        # Other schemes (v0, future ones) are ignored, as Calendly's sample code does.
    if timestamp is None:
        raise InvalidSignature("the signature header has no timestamp")
    if not signatures:
        raise InvalidSignature("the signature header has no v1 signature")
    return SignatureHeader(timestamp=timestamp, signatures=tuple(signatures))


def compute_signature(key: Secret, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(key.reveal().encode("utf-8"), message, hashlib.sha256).hexdigest()


def check_timestamp(header: SignatureHeader, now: datetime, tolerance: timedelta) -> None:
    age = now.timestamp() - header.timestamp
    if abs(age) > tolerance.total_seconds():
        raise InvalidSignature("the signature timestamp is outside the tolerance window")


def signed_with(header: SignatureHeader, body: bytes, keys: Iterable[Secret]) -> bool:
    """Whether any v1 signature matches `body` under any of `keys` (constant-time compares)."""
    matched = False
    for key in keys:
        expected = compute_signature(key, header.timestamp, body).encode("ascii")
        for candidate in header.signatures:
            # No early exit: the time taken does not depend on which key or signature matched.
            matched |= hmac.compare_digest(expected, candidate.encode("ascii"))
    return matched
