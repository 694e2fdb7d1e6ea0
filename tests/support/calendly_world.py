"""A Calendly world driven through the fake, each change sent as the deliveries Calendly sends,
each delivery written in any of the shapes Calendly has used (issue 16, DR-47)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from domain.meetings import Meeting, MeetingStatus
from domain.usecases.handle_webhook_event import WebhookCommand
from tests.fakes.calendly import BASE, FakeCalendlyApi, FakeUser
from tests.support.core import Core
from tests.support.deliveries import sign

Style = Literal["current", "legacy", "legacy_flag_only"]
STYLES: tuple[Style, ...] = ("current", "legacy", "legacy_flag_only")
NAMES = ("Grace Guest", "Zoë Ångström", "李雷", "Мария", "O'Brien 🎉")
LOCATIONS: tuple[dict[str, Any], ...] = (
    {"type": "zoom", "join_url": "https://zoom.example/j/1", "status": "pushed", "data": {}},
    {"type": "physical", "location": "Café Zürich, 1er étage"},
    {"type": "hologram_booth", "coordinates": [1, 2, 3], "note": "a type Calendly may add"},
    {"type": "custom", "location": "🚀"},
)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Shape:
    """How one delivery is written (never what it says)."""

    style: Style
    canceler_type: bool
    deleted_no_show_null: bool
    extras: bool


@dataclass
class Delivery:
    event: str
    invitee_uri: str
    at: datetime
    no_show_uri: str | None = None


@dataclass
class World:
    """Calendly's side: the fake's state, and each change as the deliveries it sends."""

    calendly: FakeCalendlyApi
    host: FakeUser
    core: Core
    pending: list[Delivery] = field(default_factory=list)
    sent: list[Delivery] = field(default_factory=list)
    no_shows: dict[str, str] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def active_invitees(self) -> list[str]:
        return [
            uri
            for uri, i in self.calendly.invitees.items()
            if i.status is MeetingStatus.ACTIVE
            and self.calendly.events[i.event_uri].meeting.status is MeetingStatus.ACTIVE
        ]

    def send(self, event: str, invitee_uri: str, no_show_uri: str | None = None) -> None:
        delivery = Delivery(event, invitee_uri, self.core.clock.now(), no_show_uri)
        self.pending.append(delivery)
        self.sent.append(delivery)
        self.core.clock.advance(60)

    def book(self, name: str, location: dict[str, Any], start_hours: int) -> None:
        start = self.core.clock.now() + timedelta(hours=start_hours)
        _, invitee = self.calendly.book(
            self.host,
            start,
            name=f"Intro · {name}",
            invitee_name=name,
            email=f"guest{next(self.ids)}@example.org",
            location=location,
        )
        self.send("invitee.created", invitee)

    def add_invitee(self, pick: int, name: str) -> None:
        events = [
            uri
            for uri, e in self.calendly.events.items()
            if e.meeting.status is MeetingStatus.ACTIVE
        ]
        if events:
            invitee = self.calendly.add_invitee(
                events[pick % len(events)], email=f"g{next(self.ids)}@example.org", name=name
            )
            self.send("invitee.created", invitee)

    def cancel(self, pick: int, by_host: bool) -> None:
        active = self.active_invitees()
        if active:
            invitee = active[pick % len(active)]
            self.calendly.cancel(
                invitee, canceler_type="host" if by_host else "invitee", reason="ça dépend"
            )
            self.send("invitee.canceled", invitee)

    def reschedule(self, pick: int, start_hours: int) -> None:
        active = self.active_invitees()
        if active:
            old = active[pick % len(active)]
            start = self.core.clock.now() + timedelta(hours=start_hours)
            _, new = self.calendly.reschedule(old, start)
            self.send("invitee.canceled", old)
            self.send("invitee.created", new)

    def no_show(self, pick: int, flag: bool) -> None:
        invitees = list(self.calendly.invitees)
        if not invitees:
            return
        invitee = invitees[pick % len(invitees)]
        marked = invitee in self.no_shows
        if flag and not marked:
            self.calendly.mark_no_show(invitee, True)
            self.no_shows[invitee] = f"{BASE}/invitee_no_shows/n{next(self.ids)}"
            self.send("invitee_no_show.created", invitee, self.no_shows[invitee])
        elif not flag and marked:
            self.calendly.mark_no_show(invitee, False)
            self.send("invitee_no_show.deleted", invitee, self.no_shows.pop(invitee))

    # ------------------------------------------------------------ rendering
    def body(self, delivery: Delivery, shape: Shape) -> bytes:
        """The delivery as Calendly writes it in `shape`, from the state at its sending."""
        invitee = self.calendly.invitees[delivery.invitee_uri]
        meeting = self.calendly.events[invitee.event_uri].meeting
        # What the delivery says is what was true when it was sent: an invitee.created never
        # says canceled, even when the invitee was canceled since.
        canceled = delivery.event == "invitee.canceled" or (
            invitee.status is MeetingStatus.CANCELED and not delivery.event.startswith("invitee.")
        )
        payload: dict[str, Any] = {
            "uri": invitee.invitee_uri,
            "event": invitee.event_uri,
            "email": invitee.email,
            "name": invitee.name,
            "timezone": invitee.timezone,
            "rescheduled": bool(invitee.new_invitee_uri) and canceled,
            "old_invitee": invitee.old_invitee_uri,
            "new_invitee": invitee.new_invitee_uri if canceled else None,
            "no_show": None,
            "questions_and_answers": [{"question": "Sujet ?", "answer": "Übersicht"}],
            "created_at": iso(delivery.at),
        }
        if shape.style != "legacy_flag_only":
            payload["status"] = "canceled" if canceled else "active"
        if shape.style != "current":
            payload["canceled"] = canceled
        if canceled and invitee.cancellation is not None:
            c = invitee.cancellation
            payload["cancellation"] = {
                "canceled_by": c.canceled_by,
                "reason": c.reason,
                "created_at": iso(c.canceled_at) if c.canceled_at else None,
            }
            if shape.canceler_type:
                payload["cancellation"]["canceler_type"] = c.canceler_type
        if delivery.no_show_uri is not None and not (
            delivery.event == "invitee_no_show.deleted" and shape.deleted_no_show_null
        ):
            payload["no_show"] = {"uri": delivery.no_show_uri, "created_at": iso(delivery.at)}
        if shape.style == "current":
            payload["scheduled_event"] = self.event_json(meeting, delivery)
        if shape.extras:
            payload["routing_form_submission"] = None
            payload["a_field_from_the_future"] = {"nested": ["ünïcödé", 1, None]}
        body: dict[str, Any] = {
            "event": delivery.event,
            "created_at": iso(delivery.at),
            "created_by": self.host.uri,
            "payload": payload,
        }
        if shape.extras:
            body["envelope_field_from_the_future"] = True
        return json.dumps(body, ensure_ascii=shape.extras).encode()

    def event_json(self, meeting: Meeting, delivery: Delivery) -> dict[str, Any]:
        # The event as it was when the delivery was sent: canceled only if it was by then.
        was_canceled = (
            meeting.status is MeetingStatus.CANCELED
            and meeting.cancellation is not None
            and meeting.cancellation.canceled_at is not None
            and meeting.cancellation.canceled_at <= delivery.at
        )
        event: dict[str, Any] = {
            "uri": meeting.event_uri,
            "name": meeting.name,
            "status": "canceled" if was_canceled else "active",
            "start_time": iso(meeting.start_time) if meeting.start_time else None,
            "end_time": iso(meeting.end_time) if meeting.end_time else None,
            "location": meeting.location,
            "event_memberships": [{"user": self.host.uri}],
        }
        if was_canceled and meeting.cancellation is not None:
            c = meeting.cancellation
            event["cancellation"] = {
                "canceled_by": c.canceled_by,
                "reason": c.reason,
                "canceler_type": c.canceler_type,
                "created_at": iso(c.canceled_at) if c.canceled_at else None,
            }
        return event


async def deliver(world: World, body: bytes) -> str:
    core = world.core
    connection = core.db.connections["u"]
    assert connection.signing_key is not None
    result = await core.handle_webhook(
        WebhookCommand(
            body=body,
            signature=sign(
                body, connection.signing_key.reveal(), int(core.clock.now().timestamp())
            ),
            webhook_token=connection.webhook_token,
        )
    )
    return result.outcome
