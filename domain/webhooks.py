"""A delivery from Calendly in domain terms, and the key that makes it take effect once."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Protocol

import msgspec

from .ports import MeetingChange

INVITEE_CREATED = "invitee.created"
INVITEE_CANCELED = "invitee.canceled"
NO_SHOW_CREATED = "invitee_no_show.created"
NO_SHOW_DELETED = "invitee_no_show.deleted"
SUBSCRIBED_EVENTS: tuple[str, ...] = (
    INVITEE_CREATED,
    INVITEE_CANCELED,
    NO_SHOW_CREATED,
    NO_SHOW_DELETED,
)


class InboundWebhook(msgspec.Struct, frozen=True, kw_only=True):
    """What a delivery says, translated from Calendly's JSON by the adapter."""

    event: str
    created_at: datetime | None
    created_by: str | None
    payload_uri: str | None
    host_user_uris: tuple[str, ...] = ()
    no_show_uri: str | None = None
    # The effect on a meeting, for the events the service understands; None otherwise.
    change: MeetingChange | None = None
    # SHA-256 of the raw payload, for events without a natural key.
    payload_digest: str

    def dedup_key(self) -> str:
        """Identify the delivery (Calendly sends no id): retries and duplicates share it.

        An invitee is created once and canceled at most once, so its URI names both events.
        No-shows can be marked and unmarked repeatedly; each mark has its own URI.
        """
        if self.event in (INVITEE_CREATED, INVITEE_CANCELED) and self.payload_uri:
            return f"{self.event}:{self.payload_uri}"
        if self.event in (NO_SHOW_CREATED, NO_SHOW_DELETED):
            if self.no_show_uri:
                return f"{self.event}:{self.no_show_uri}"
            if self.payload_uri and self.created_at is not None:
                return f"{self.event}:{self.payload_uri}:{self.created_at.isoformat()}"
        return f"{self.event}:sha256:{self.payload_digest}"

    def concerns(self, calendly_user_uri: str) -> bool:
        """Whether this delivery is about that Calendly user (its creator or a host)."""
        return self.created_by == calendly_user_uri or calendly_user_uri in self.host_user_uris


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class WebhookDecoder(Protocol):
    """Translates a delivery's raw body into an InboundWebhook."""

    def decode(self, body: bytes) -> InboundWebhook:
        """Raises UnusablePayload saying why the body cannot be understood."""
        ...
