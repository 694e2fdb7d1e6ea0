"""Meetings and their invitees, and the rules that make webhook order irrelevant."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec
from msgspec.structs import replace


class MeetingStatus(StrEnum):
    ACTIVE = "active"
    CANCELED = "canceled"


class Cancellation(msgspec.Struct, frozen=True, kw_only=True):
    canceled_by: str | None = None
    reason: str | None = None
    canceler_type: str | None = None
    canceled_at: datetime | None = None


class Meeting(msgspec.Struct, frozen=True, kw_only=True):
    """A scheduled event as one connected user sees it (group events have many invitees)."""

    event_uri: str
    name: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    status: MeetingStatus = MeetingStatus.ACTIVE
    location: dict[str, Any] | None = None
    cancellation: Cancellation | None = None

    def merged_with(self, newer: Meeting) -> Meeting:
        """Combine what two deliveries said about one event, in whatever order they came.

        Canceled is terminal; known details are never replaced by unknown ones.
        """
        canceled = MeetingStatus.CANCELED in (self.status, newer.status)
        return Meeting(
            event_uri=self.event_uri,
            name=newer.name or self.name,
            start_time=newer.start_time or self.start_time,
            end_time=newer.end_time or self.end_time,
            status=MeetingStatus.CANCELED if canceled else MeetingStatus.ACTIVE,
            location=newer.location if newer.location is not None else self.location,
            cancellation=self.cancellation or newer.cancellation,
        )


class Invitee(msgspec.Struct, frozen=True, kw_only=True):
    """One invitee of a meeting; a reschedule links the old and the new invitee."""

    invitee_uri: str
    event_uri: str
    email: str | None = None
    name: str | None = None
    timezone: str | None = None
    status: MeetingStatus = MeetingStatus.ACTIVE
    cancellation: Cancellation | None = None
    rescheduled: bool = False
    old_invitee_uri: str | None = None
    new_invitee_uri: str | None = None
    no_show: bool = False
    # Calendly's time of the latest no-show change applied: an older change never wins.
    no_show_changed_at: datetime | None = None

    def merged_with(self, newer: Invitee) -> Invitee:
        """Combine two observations of one invitee; cancel is terminal, links accumulate."""
        canceled = MeetingStatus.CANCELED in (self.status, newer.status)
        return Invitee(
            invitee_uri=self.invitee_uri,
            event_uri=self.event_uri,
            email=newer.email or self.email,
            name=newer.name or self.name,
            timezone=newer.timezone or self.timezone,
            status=MeetingStatus.CANCELED if canceled else MeetingStatus.ACTIVE,
            cancellation=self.cancellation or newer.cancellation,
            rescheduled=self.rescheduled or newer.rescheduled,
            old_invitee_uri=self.old_invitee_uri or newer.old_invitee_uri,
            new_invitee_uri=self.new_invitee_uri or newer.new_invitee_uri,
            no_show=self.no_show,
            no_show_changed_at=self.no_show_changed_at,
        )

    def with_no_show(self, flag: bool, changed_at: datetime) -> Invitee:
        """Apply a no-show mark or unmark unless a later change was already applied."""
        if self.no_show_changed_at is not None and changed_at <= self.no_show_changed_at:
            # A tie keeps what is there: the same instant cannot order the two changes.
            return self
        return replace(self, no_show=flag, no_show_changed_at=changed_at)
