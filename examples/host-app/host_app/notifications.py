"""The service's notifications to the host app: check the signature, keep the last ones.

calendly-connect POSTs one JSON object per change to HOST_WEBHOOK_URL:

    {"id": 17, "type": "connection.needs_reauth", "user_id": "alice",
     "created_at": "2025-01-01T12:00:00.000000Z"}

with `Calendly-Connect-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` where the HMAC, keyed
with HOST_WEBHOOK_SECRET, is over `<t>.` followed by the raw body bytes. Types today:
connection.needs_reauth, connection.recovered, connection.webhooks_disabled,
connection.webhooks_unavailable_plan. A delivery that is not answered with 2xx is retried with
back-off, so the same `id` can arrive more than once: handle each id once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

SIGNATURE_HEADER: Final = "Calendly-Connect-Signature"
# A signature older (or further in the future) than this is refused: a captured delivery cannot
# be replayed later.
TOLERANCE_SECONDS: Final = 300
KEEP: Final = 50


class SignatureInvalid(Exception):
    """The delivery is not from the service (or is too old); the message says which check."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value the service sends for `body` at `timestamp` (for tests and tools)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    header: str | None,
    body: bytes,
    secrets: Sequence[str],
    *,
    now: float | None = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> None:
    """Raises SignatureInvalid unless `header` signs `body` under one of `secrets`, recently.

    Several secrets let the host rotate HOST_WEBHOOK_SECRET without refusing deliveries signed
    with the old one meanwhile; several `v1` values are accepted for the same reason.
    """
    if not secrets:
        raise SignatureInvalid("no HOST_WEBHOOK_SECRET is configured")
    if not header:
        raise SignatureInvalid(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureInvalid("the signature header is malformed")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureInvalid("the signature is too old (or its clock is off)")
    for secret in secrets:
        expected = sign(secret, timestamp, body).rpartition("v1=")[2]
        if any(hmac.compare_digest(expected, candidate) for candidate in candidates):
            return
    raise SignatureInvalid("the signature does not match")


class NotificationInvalid(ValueError):
    """A signed body that is not a notification."""


@dataclass(frozen=True)
class Notification:
    id: int
    type: str
    user_id: str
    created_at: str
    received_at: float

    @classmethod
    def parse(cls, body: bytes, *, received_at: float) -> Notification:
        try:
            data: Any = json.loads(body)
        except ValueError as exc:
            raise NotificationInvalid("the body is not JSON") from exc
        if not isinstance(data, dict):
            raise NotificationInvalid("the body is not a JSON object")
        kinds = {"id": int, "type": str, "user_id": str, "created_at": str}
        for name, kind in kinds.items():
            if not isinstance(data.get(name), kind) or isinstance(data.get(name), bool):
                raise NotificationInvalid(f"'{name}' is missing or not a {kind.__name__}")
        return cls(
            id=data["id"],
            type=data["type"],
            user_id=data["user_id"],
            created_at=data["created_at"],
            received_at=received_at,
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Inbox:
    """The last notifications received, newest first, each id once."""

    def __init__(self, keep: int = KEEP) -> None:
        self._items: deque[Notification] = deque(maxlen=keep)

    def add(self, notification: Notification) -> bool:
        """Keep `notification`; False when its id was seen already (a retried delivery)."""
        if any(item.id == notification.id for item in self._items):
            return False
        self._items.appendleft(notification)
        return True

    def for_user(self, user_id: str) -> list[Notification]:
        return [item for item in self._items if item.user_id == user_id]

    def all(self) -> list[Notification]:
        return list(self._items)
