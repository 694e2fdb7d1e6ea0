"""Calendly webhook bodies (current and pre-2022 shapes) translated into InboundWebhook."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from domain.errors import UnusablePayload
from domain.meetings import Cancellation, Invitee, Meeting, MeetingStatus
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

INVITEE_EVENTS = (INVITEE_CREATED, INVITEE_CANCELED, NO_SHOW_CREATED, NO_SHOW_DELETED)


class WireCancellation(msgspec.Struct, kw_only=True):
    canceled_by: str | None = None
    reason: str | None = None
    canceler_type: str | None = None
    created_at: datetime | None = None


class WireMembership(msgspec.Struct, kw_only=True):
    user: str | None = None


class WireScheduledEvent(msgspec.Struct, kw_only=True):
    uri: str
    name: str | None = None
    status: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    # Polymorphic by `type`, with types added over time: kept as data, never interpreted.
    location: dict[str, Any] | None = None
    event_memberships: list[WireMembership] | None = None
    cancellation: WireCancellation | None = None


class WireNoShow(msgspec.Struct, kw_only=True):
    uri: str | None = None
    created_at: datetime | None = None


class WireInvitee(msgspec.Struct, kw_only=True):
    uri: str | None = None
    event: str | None = None
    email: str | None = None
    name: str | None = None
    status: str | None = None
    timezone: str | None = None
    rescheduled: bool | None = None
    old_invitee: str | None = None
    new_invitee: str | None = None
    cancellation: WireCancellation | None = None
    no_show: WireNoShow | None = None
    # Pre-2022 payloads: a boolean instead of `status`, and no embedded event.
    canceled: bool | None = None
    scheduled_event: WireScheduledEvent | None = None


class WireAnyPayload(msgspec.Struct, kw_only=True):
    uri: str | None = None


class WireEnvelope(msgspec.Struct, kw_only=True):
    event: str
    created_at: datetime | None = None
    created_by: str | None = None
    payload: msgspec.Raw


_envelope = msgspec.json.Decoder(WireEnvelope)
_invitee = msgspec.json.Decoder(WireInvitee)
_any_payload = msgspec.json.Decoder(WireAnyPayload)


def _utc(value: datetime | None) -> datetime | None:
    """Calendly sends UTC with `Z`; a time without a zone is taken as UTC, never compared naive."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _cancellation(wire: WireCancellation | None) -> Cancellation | None:
    if wire is None:
        return None
    return Cancellation(
        canceled_by=wire.canceled_by,
        reason=wire.reason,
        canceler_type=wire.canceler_type,
        canceled_at=_utc(wire.created_at),
    )


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
            created_at=_utc(envelope.created_at),
            created_by=envelope.created_by,
            payload_uri=uri,
            payload_digest=digest(body),
        )

    @staticmethod
    def _invitee_event(envelope: WireEnvelope, wire: WireInvitee, body: bytes) -> InboundWebhook:
        scheduled = wire.scheduled_event
        event_uri = scheduled.uri if scheduled is not None else wire.event
        if not wire.uri or not event_uri:
            raise UnusablePayload(f"the {envelope.event} payload names no invitee or event")
        if scheduled is not None:
            meeting = Meeting(
                event_uri=event_uri,
                name=scheduled.name,
                start_time=_utc(scheduled.start_time),
                end_time=_utc(scheduled.end_time),
                status=(
                    MeetingStatus.CANCELED
                    if scheduled.status == "canceled"
                    else MeetingStatus.ACTIVE
                ),
                location=scheduled.location,
                cancellation=_cancellation(scheduled.cancellation),
            )
            hosts = tuple(m.user for m in scheduled.event_memberships or () if m.user)
        else:
            meeting = Meeting(event_uri=event_uri)
            hosts = ()
        canceled = (
            envelope.event == INVITEE_CANCELED or wire.status == "canceled" or bool(wire.canceled)
        )
        invitee = Invitee(
            invitee_uri=wire.uri,
            event_uri=event_uri,
            email=wire.email,
            name=wire.name,
            timezone=wire.timezone,
            status=MeetingStatus.CANCELED if canceled else MeetingStatus.ACTIVE,
            cancellation=_cancellation(wire.cancellation),
            rescheduled=bool(wire.rescheduled),
            old_invitee_uri=wire.old_invitee,
            new_invitee_uri=wire.new_invitee,
        )
        no_show_uri = wire.no_show.uri if wire.no_show is not None else None
        if envelope.event in (NO_SHOW_CREATED, NO_SHOW_DELETED):
            changed_at = _utc(envelope.created_at) or (
                _utc(wire.no_show.created_at) if wire.no_show is not None else None
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
            created_at=_utc(envelope.created_at),
            created_by=envelope.created_by,
            payload_uri=wire.uri,
            host_user_uris=hosts,
            no_show_uri=no_show_uri,
            change=change,
            payload_digest=digest(body),
        )
