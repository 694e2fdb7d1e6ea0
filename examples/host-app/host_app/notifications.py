"""The service's host webhooks to the host app: verify them, keep the last ones.

calendly-connect POSTs one JSON object per change to HOST_WEBHOOK_URL, the Standard Webhooks
way (https://www.standardwebhooks.com):

    webhook-id: msg_17                 the same on every retry: handle each id once
    webhook-timestamp: 1767225600      when this attempt was signed
    webhook-signature: v1,<base64>     HMAC-SHA256 of "<id>.<timestamp>.<body>" (one per secret)

    {"type": "connection.needs_reauth", "timestamp": "2026-01-01T12:00:00Z",
     "data": {"user_id": "alice", "sequence": 4, "cursor": "812.17", "subject_id": "...",
              "connection": {...}}}

verified here with the `standardwebhooks` package and HOST_WEBHOOK_SECRET (`whsec_...`). A
delivery not answered with 2xx is retried with back-off, so the same id can arrive again.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

KEEP: Final = 50


class SignatureInvalid(Exception):
    """The delivery is not from the service (or is too old); the message says which check."""


def verify_signature(body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> None:
    """Raises SignatureInvalid unless `headers` sign `body` under one of `secrets`, recently
    (Standard Webhooks: 5 minutes either way).

    Several secrets let the host rotate HOST_WEBHOOK_SECRET without refusing deliveries signed
    with the old one meanwhile (the service sends one signature per secret it has).
    """
    if not secrets:
        raise SignatureInvalid("no HOST_WEBHOOK_SECRET is configured")
    wanted = {k.lower(): v for k, v in headers.items() if k.lower().startswith("webhook-")}
    reason = "no secret"
    for secret in secrets:
        try:
            Webhook(secret).verify(body, wanted, json_parse=False)
        except WebhookVerificationError as exc:
            reason = str(exc)
        except Exception as exc:  # a secret that is not whsec_ base64
            reason = f"the secret cannot be used ({type(exc).__name__})"
        else:
            return
    raise SignatureInvalid(reason)


class NotificationInvalid(ValueError):
    """A signed body that is not a notification."""


@dataclass(frozen=True)
class Notification:
    id: str
    type: str
    user_id: str
    sequence: int
    created_at: str
    received_at: float

    @classmethod
    def parse(cls, msg_id: str, body: bytes, *, received_at: float) -> Notification:
        try:
            data: Any = json.loads(body)
        except ValueError as exc:
            raise NotificationInvalid("the body is not JSON") from exc
        if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
            raise NotificationInvalid("the body is not a webhook: no 'data' object")
        inner = data["data"]
        checks = [
            ("type", data.get("type"), str),
            ("timestamp", data.get("timestamp"), str),
            ("data.user_id", inner.get("user_id"), str),
            ("data.sequence", inner.get("sequence"), int),
        ]
        for name, value, kind in checks:
            if not isinstance(value, kind) or isinstance(value, bool):
                raise NotificationInvalid(f"'{name}' is missing or not a {kind.__name__}")
        return cls(
            id=msg_id,
            type=data["type"],
            user_id=inner["user_id"],
            sequence=inner["sequence"],
            created_at=data["timestamp"],
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
