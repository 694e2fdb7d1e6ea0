"""Calendly webhook bodies (current and pre-2022 shapes) translated into InboundWebhook."""

from __future__ import annotations

from datetime import datetime

import msgspec

from adapters.text import storable, storable_or_none
from domain.errors import UnusablePayload
from domain.meetings import Meeting
from domain.ports import MeetingChange
from domain.webhooks import (
    INVITEE_CANCELED,
    INVITEE_CREATED,
    NO_SHOW_CREATED,
    NO_SHOW_DELETED,
    InboundWebhook,
    WebhookDecoder,
    digest,
)

from . import translate, wire
from .wire import utc

INVITEE_EVENTS = (INVITEE_CREATED, INVITEE_CANCELED, NO_SHOW_CREATED, NO_SHOW_DELETED)
# What msgspec raises for a body it cannot use: malformed JSON, a value that does not fit (a
# ValidationError, a time outside what UTC holds among them: see `wire.utc`), bytes that are
# not UTF-8, and nesting deeper than the interpreter's recursion limit lets it follow (a 2 KB
# body nested 1,000 levels does it, wherever the nesting is, even in fields never read).
UNREADABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


class WireAnyPayload(msgspec.Struct, kw_only=True):
    uri: str | None = None


class WireEnvelope(msgspec.Struct, kw_only=True):
    event: str
    created_at: datetime | None = None
    created_by: str | None = None
    payload: msgspec.Raw

    def __post_init__(self) -> None:
        self.created_at = utc(self.created_at)


_envelope = msgspec.json.Decoder(WireEnvelope)
_invitee = msgspec.json.Decoder(wire.Invitee)
_any_payload = msgspec.json.Decoder(WireAnyPayload)


class MsgspecWebhookDecoder(WebhookDecoder):
    """Lenient about what Calendly adds, strict about what the effect needs.

    Whatever the body, the answer is an InboundWebhook whose times are all in UTC and whose
    routing fields hold only text Postgres can store, or UnusablePayload: never another error.
    """

    def decode(self, body: bytes) -> InboundWebhook:
        try:
            envelope = _envelope.decode(body)
        except UNREADABLE as exc:
            raise UnusablePayload(f"the body is not a Calendly webhook envelope: {exc}") from None
        event = storable(envelope.event)
        if event not in INVITEE_EVENTS:
            return self._other(envelope, event, body)
        try:
            invitee = _invitee.decode(envelope.payload)
        except UNREADABLE as exc:
            raise UnusablePayload(f"the {event} payload cannot be read: {exc}") from None
        return self._invitee_event(envelope, event, invitee, body)

    @staticmethod
    def _other(envelope: WireEnvelope, event: str, body: bytes) -> InboundWebhook:
        try:
            uri = _any_payload.decode(envelope.payload).uri
        except RecursionError as exc:
            raise UnusablePayload(f"the {event} payload cannot be read: {exc}") from None
        except (msgspec.DecodeError, UnicodeDecodeError):
            uri = None
        return InboundWebhook(
            event=event,
            created_at=envelope.created_at,
            created_by=storable_or_none(envelope.created_by),
            payload_uri=storable_or_none(uri),
            payload_digest=digest(body),
        )

    @staticmethod
    def _invitee_event(
        envelope: WireEnvelope, event: str, source: wire.Invitee, body: bytes
    ) -> InboundWebhook:
        scheduled = source.scheduled_event
        event_uri = scheduled.uri if scheduled is not None else source.event
        if not source.uri or not event_uri or _last_segment(event_uri) in ("", ".", ".."):
            raise UnusablePayload(f"the {event} payload names no invitee or event")
        if scheduled is not None:
            meeting = translate.meeting(scheduled)
            hosts = translate.host_uris(scheduled)
        else:
            # The pre-2022 shape: the event's URI only. Its details, status among them, are
            # read from Calendly by a worker (DR-47); never guessed from this invitee.
            meeting = Meeting(event_uri=event_uri)
            hosts = ()
        needs_details = scheduled is None
        invitee = translate.invitee(
            source,
            invitee_uri=source.uri,
            event_uri=event_uri,
            canceled=event == INVITEE_CANCELED,
        )
        no_show_uri = source.no_show.uri if source.no_show is not None else None
        if event in (NO_SHOW_CREATED, NO_SHOW_DELETED):
            changed_at = envelope.created_at or (
                source.no_show.created_at if source.no_show is not None else None
            )
            if changed_at is None:
                raise UnusablePayload(f"the {event} delivery carries no time")
            change = MeetingChange(
                meeting=meeting,
                invitee=invitee,
                no_show=event == NO_SHOW_CREATED,
                no_show_at=changed_at,
                needs_details=needs_details,
            )
        else:
            change = MeetingChange(meeting=meeting, invitee=invitee, needs_details=needs_details)
        # What routes and identifies the delivery is made storable here; the meeting itself
        # is made storable where every source's meetings are written (the repository).
        return InboundWebhook(
            event=event,
            created_at=envelope.created_at,
            created_by=storable_or_none(envelope.created_by),
            payload_uri=storable(source.uri),
            host_user_uris=tuple(storable(uri) for uri in hosts),
            no_show_uri=storable_or_none(no_show_uri),
            change=change,
            payload_digest=digest(body),
        )


def _last_segment(uri: str) -> str:
    """The URI's last path segment, which names the event where Calendly is asked about it."""
    return uri.rstrip("/").rsplit("/", 1)[-1]
