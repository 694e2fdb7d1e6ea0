"""Calendly webhook bodies (current and pre-2022 shapes) translated into InboundWebhook."""

from __future__ import annotations

from datetime import datetime

import msgspec

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
from .translate import utc

INVITEE_EVENTS = (INVITEE_CREATED, INVITEE_CANCELED, NO_SHOW_CREATED, NO_SHOW_DELETED)


class WireAnyPayload(msgspec.Struct, kw_only=True):
    uri: str | None = None


class WireEnvelope(msgspec.Struct, kw_only=True):
    event: str
    created_at: datetime | None = None
    created_by: str | None = None
    payload: msgspec.Raw


_envelope = msgspec.json.Decoder(WireEnvelope)
_invitee = msgspec.json.Decoder(wire.Invitee)
_any_payload = msgspec.json.Decoder(WireAnyPayload)


class MsgspecWebhookDecoder(WebhookDecoder):
    """Lenient about what Calendly adds, strict about what the effect needs."""

    def decode(self, body: bytes) -> InboundWebhook:
        try:
            envelope = _envelope.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            raise UnusablePayload(f"the body is not a Calendly webhook envelope: {exc}") from None
        if envelope.event not in INVITEE_EVENTS:
            return self._other(envelope, body)
        try:
            invitee = _invitee.decode(envelope.payload)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            raise UnusablePayload(f"the {envelope.event} payload cannot be read: {exc}") from None
        return self._invitee_event(envelope, invitee, body)

    @staticmethod
    def _other(envelope: WireEnvelope, body: bytes) -> InboundWebhook:
        try:
            uri = _any_payload.decode(envelope.payload).uri
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            uri = None
        return InboundWebhook(
            event=envelope.event,
            created_at=utc(envelope.created_at),
            created_by=envelope.created_by,
            payload_uri=uri,
            payload_digest=digest(body),
        )

    @staticmethod
    def _invitee_event(envelope: WireEnvelope, source: wire.Invitee, body: bytes) -> InboundWebhook:
        scheduled = source.scheduled_event
        event_uri = scheduled.uri if scheduled is not None else source.event
        if not source.uri or not event_uri:
            raise UnusablePayload(f"the {envelope.event} payload names no invitee or event")
        if scheduled is not None:
            meeting = translate.meeting(scheduled)
            hosts = translate.host_uris(scheduled)
        else:
            meeting = Meeting(event_uri=event_uri)
            hosts = ()
        invitee = translate.invitee(
            source,
            invitee_uri=source.uri,
            event_uri=event_uri,
            canceled=envelope.event == INVITEE_CANCELED,
        )
        no_show_uri = source.no_show.uri if source.no_show is not None else None
        if envelope.event in (NO_SHOW_CREATED, NO_SHOW_DELETED):
            changed_at = utc(envelope.created_at) or (
                utc(source.no_show.created_at) if source.no_show is not None else None
            )
            if changed_at is None:
                raise UnusablePayload(f"the {envelope.event} delivery carries no time")
            change = MeetingChange(
                meeting=meeting,
                invitee=invitee,
                no_show=envelope.event == NO_SHOW_CREATED,
                no_show_at=changed_at,
            )
        else:
            change = MeetingChange(meeting=meeting, invitee=invitee)
        return InboundWebhook(
            event=envelope.event,
            created_at=utc(envelope.created_at),
            created_by=envelope.created_by,
            payload_uri=source.uri,
            host_user_uris=hosts,
            no_show_uri=no_show_uri,
            change=change,
            payload_digest=digest(body),
        )
