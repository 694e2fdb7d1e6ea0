"""Scheduled events and their invitees: book, add, cancel, reschedule, mark no-shows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from calendly_sandbox.errors import ApiError, invalid_argument
from calendly_sandbox.model import (
    CancelerType,
    Cancellation,
    Invitee,
    NoShow,
    ScheduledEvent,
    User,
    new_id,
)

from .context import Context
from .people import People

LOCATION_TYPES: dict[str, Callable[[], dict[str, Any]]] = {
    "physical": lambda: {"type": "physical", "location": "Main Street 1, Springfield"},
    "zoom": lambda: {
        "type": "zoom",
        "join_url": "https://zoom.example/j/1",
        "status": "pushed",
        "data": {},
    },
    "google_conference": lambda: {
        "type": "google_conference",
        "join_url": "https://meet.example/abc",
        "status": "pushed",
    },
    "microsoft_teams_conference": lambda: {
        "type": "microsoft_teams_conference",
        "join_url": "https://teams.example/l/1",
        "status": "pushed",
        "data": {},
    },
    "gotomeeting": lambda: {
        "type": "gotomeeting",
        "join_url": "https://gotomeeting.example/join/1",
        "status": "pushed",
        "data": {},
    },
    "webex": lambda: {
        "type": "webex",
        "join_url": "https://webex.example/meet/1",
        "status": "pushed",
        "data": {},
    },
    "outbound_call": lambda: {"type": "outbound_call", "location": "+1 555 0100"},
    "inbound_call": lambda: {"type": "inbound_call", "location": "+1 555 0101"},
    "custom": lambda: {"type": "custom", "location": "Somewhere custom"},
    "ask_invitee": lambda: {"type": "ask_invitee", "location": "Invitee's choice"},
}


@dataclass(frozen=True)
class Notification:
    """Something happened that subscriptions may be told about."""

    event: str
    invitee_id: str
    created_at: float


class Bookings:
    """Every scheduled event and invitee; each change returns the notifications it causes."""

    def __init__(self, context: Context, people: People) -> None:
        self.context = context
        self.people = people
        self.events: dict[str, ScheduledEvent] = {}
        self.invitees: dict[str, Invitee] = {}
        self.event_type_ids: dict[str, str] = {}

    def event_type_id(self, host_id: str, name: str) -> str:
        key = f"{host_id}:{name}"
        if key not in self.event_type_ids:
            self.event_type_ids[key] = new_id()
        return self.event_type_ids[key]

    def get_event(self, event_id: str) -> ScheduledEvent:
        """The event; raises ApiError 404."""
        event = self.events.get(event_id)
        if event is None:
            raise ApiError(404)
        return event

    def get_invitee(self, invitee_id: str) -> Invitee:
        """The invitee; raises ApiError 404."""
        invitee = self.invitees.get(invitee_id)
        if invitee is None:
            raise ApiError(404)
        return invitee

    def event_of(self, invitee: Invitee) -> ScheduledEvent:
        return self.events[invitee.event_id]

    def event_visible(self, caller: User, event: ScheduledEvent) -> bool:
        return event.host_id == caller.id or (
            caller.is_admin and event.organization_id == caller.organization_id
        )

    # ------------------------------------------------------------ booking
    def book(
        self,
        host: User,
        *,
        invitees: list[tuple[str, str]],
        start_time: float,
        duration_minutes: int,
        name: str,
        location_type: str,
        invitee_limit: int,
        timezone: str = "America/New_York",
        questions_and_answers: list[dict[str, Any]] | None = None,
    ) -> tuple[ScheduledEvent, list[Notification]]:
        """A new event with `host` and (name, email) `invitees`: one `invitee.created` each."""
        if location_type not in LOCATION_TYPES:
            raise invalid_argument("location_type", f"must be one of {sorted(LOCATION_TYPES)}")
        if not invitees:
            raise invalid_argument("invitees", "at least one invitee is required")
        limit = max(invitee_limit, len(invitees))
        now = self.context.clock.now()
        event = ScheduledEvent(
            id=new_id(),
            name=name,
            host_id=host.id,
            organization_id=host.organization_id,
            event_type_id=self.event_type_id(host.id, name),
            start_time=start_time,
            end_time=start_time + duration_minutes * 60,
            location=LOCATION_TYPES[location_type](),
            invitee_limit=limit,
            created_at=now,
            updated_at=now,
        )
        self.events[event.id] = event
        notes = [
            self._add_invitee(event, email, invitee_name, timezone, questions_and_answers)
            for invitee_name, email in invitees
        ]
        return event, notes

    def add_invitee(
        self, event: ScheduledEvent, name: str, email: str, timezone: str = "America/New_York"
    ) -> Notification:
        """One more invitee of a group event; raises ApiError 400 when canceled or full."""
        if event.status != "active":
            raise ApiError(400, "The event is canceled")
        active = sum(1 for i in event.invitee_ids if self.invitees[i].status == "active")
        if active >= event.invitee_limit:
            raise ApiError(400, "The event is full")
        return self._add_invitee(event, email, name, timezone, None)

    def _add_invitee(
        self,
        event: ScheduledEvent,
        email: str,
        name: str,
        timezone: str,
        qa: list[dict[str, Any]] | None,
        old_invitee_id: str | None = None,
    ) -> Notification:
        now = self.context.clock.now()
        invitee = Invitee(
            id=new_id(),
            event_id=event.id,
            email=email,
            name=name,
            timezone=timezone,
            created_at=now,
            updated_at=now,
            questions_and_answers=list(qa or []),
            old_invitee_id=old_invitee_id,
        )
        self.invitees[invitee.id] = invitee
        event.invitee_ids.append(invitee.id)
        event.updated_at = now
        return Notification("invitee.created", invitee.id, now)

    # ------------------------------------------------------- cancellation
    def cancel_invitee(
        self,
        invitee: Invitee,
        canceler_type: CancelerType,
        reason: str | None,
        *,
        rescheduled_to: str | None = None,
    ) -> Notification:
        """Cancel one invitee (the event too once none is left); raises ApiError 400 if done."""
        if invitee.status == "canceled":
            raise ApiError(400, "The invitee is already canceled")
        event = self.events[invitee.event_id]
        now = self.context.clock.now()
        canceled_by = (
            self.people.users[event.host_id].name if canceler_type == "host" else invitee.name
        )
        invitee.status = "canceled"
        invitee.updated_at = now
        invitee.cancellation = Cancellation(canceled_by, reason, canceler_type, now)
        if rescheduled_to is not None:
            invitee.rescheduled = True
            invitee.new_invitee_id = rescheduled_to
        if all(self.invitees[i].status == "canceled" for i in event.invitee_ids):
            event.status = "canceled"
            event.cancellation = invitee.cancellation
        event.updated_at = now
        return Notification("invitee.canceled", invitee.id, now)

    def cancel_event(self, event: ScheduledEvent, reason: str | None) -> list[Notification]:
        active = [self.invitees[i] for i in event.invitee_ids]
        return [self.cancel_invitee(i, "host", reason) for i in active if i.status == "active"]

    def reschedule(
        self, invitee: Invitee, start_time: float, duration_minutes: int | None
    ) -> tuple[Notification, Notification]:
        """The invitee moves to a new time: a new event and invitee, the old one canceled.

        Returns (canceled, created) notifications; the caller chooses the delivery order.
        """
        if invitee.status == "canceled":
            raise ApiError(400, "The invitee is already canceled")
        old_event = self.events[invitee.event_id]
        duration = (
            duration_minutes * 60
            if duration_minutes is not None
            else old_event.end_time - old_event.start_time
        )
        host = self.people.users[old_event.host_id]
        now = self.context.clock.now()
        new_event = ScheduledEvent(
            id=new_id(),
            name=old_event.name,
            host_id=host.id,
            organization_id=old_event.organization_id,
            event_type_id=old_event.event_type_id,
            start_time=start_time,
            end_time=start_time + duration,
            location=dict(old_event.location),
            invitee_limit=1,
            created_at=now,
            updated_at=now,
        )
        self.events[new_event.id] = new_event
        created = self._add_invitee(
            new_event,
            invitee.email,
            invitee.name,
            invitee.timezone,
            invitee.questions_and_answers,
            old_invitee_id=invitee.id,
        )
        canceled = self.cancel_invitee(
            invitee, "invitee", "Rescheduled", rescheduled_to=created.invitee_id
        )
        return canceled, created

    # ----------------------------------------------------------- no-shows
    def mark_no_show(self, invitee: Invitee) -> Notification:
        """Raises ApiError 400 when already marked."""
        if invitee.no_show is not None:
            raise ApiError(400, "The invitee is already marked as a no-show")
        now = self.context.clock.now()
        invitee.no_show = NoShow(id=new_id(), created_at=now)
        invitee.updated_at = now
        return Notification("invitee_no_show.created", invitee.id, now)

    def unmark_no_show(self, invitee: Invitee) -> tuple[Notification, NoShow]:
        """Returns the removed no-show too (its payload still names it); raises ApiError 400."""
        if invitee.no_show is None:
            raise ApiError(400, "The invitee is not marked as a no-show")
        now = self.context.clock.now()
        removed = invitee.no_show
        invitee.no_show = None
        invitee.updated_at = now
        return Notification("invitee_no_show.deleted", invitee.id, now), removed
