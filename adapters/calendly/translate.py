"""Calendly's scheduled events and invitees (wire Structs) as domain Meetings and Invitees."""

from __future__ import annotations

from domain.meetings import Cancellation, Invitee, Meeting, MeetingStatus

from . import wire
from .wire import utc


def cancellation(source: wire.Cancellation | None) -> Cancellation | None:
    if source is None:
        return None
    return Cancellation(
        canceled_by=source.canceled_by,
        reason=source.reason,
        canceler_type=source.canceler_type,
        canceled_at=utc(source.created_at),
    )


def meeting(event: wire.ScheduledEvent) -> Meeting:
    """The event as a Meeting; any status but `canceled` reads as active."""
    return Meeting(
        event_uri=event.uri,
        name=event.name,
        start_time=utc(event.start_time),
        end_time=utc(event.end_time),
        status=MeetingStatus.CANCELED if event.status == "canceled" else MeetingStatus.ACTIVE,
        location=event.location,
        cancellation=cancellation(event.cancellation),
    )


def host_uris(event: wire.ScheduledEvent) -> tuple[str, ...]:
    """The user URIs of the event's hosts (its memberships)."""
    return tuple(m.user for m in event.event_memberships or () if m.user)


def invitee(
    source: wire.Invitee,
    *,
    invitee_uri: str,
    event_uri: str,
    canceled: bool = False,
    read_no_show: bool = False,
) -> Invitee:
    """The invitee as a domain Invitee.

    Canceled when `canceled` says so (a delivery's event name), when its `status` is
    `canceled`, or when a pre-2022 payload's `canceled` flag is set. With `read_no_show`, the
    no-show mark Calendly reports now becomes the invitee's state (as a listing reads it); a
    webhook leaves it out, because its no-show changes travel with the delivery's own time.
    """
    is_canceled = canceled or source.status == "canceled" or bool(source.canceled)
    mark = source.no_show if read_no_show else None
    return Invitee(
        invitee_uri=invitee_uri,
        event_uri=event_uri,
        email=source.email,
        name=source.name,
        timezone=source.timezone,
        status=MeetingStatus.CANCELED if is_canceled else MeetingStatus.ACTIVE,
        cancellation=cancellation(source.cancellation),
        rescheduled=bool(source.rescheduled),
        old_invitee_uri=source.old_invitee,
        new_invitee_uri=source.new_invitee,
        no_show=mark is not None,
        no_show_changed_at=utc(mark.created_at) if mark is not None else None,
    )
