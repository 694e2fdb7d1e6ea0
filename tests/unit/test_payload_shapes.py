"""Whatever shape Calendly's deliveries take, and in whatever order they come, the meetings a
user sees end up as Calendly has them (issue 16, DR-47).

A world of bookings is driven through the fake Calendly; each change is delivered as Calendly
would, each delivery in a shape drawn at random from those Calendly has sent (today's with the
event embedded; the pre-2022 one with only the event's URI and a boolean `canceled`, with or
without `status`; cancellations with or without `canceler_type`; `no_show` set or null on
`invitee_no_show.deleted`; unknown fields and location types; 16-character ids or UUIDs;
non-ASCII text), in an order drawn at random, with retries, with the worker completing
meetings at random points between. At the end every meeting must equal Calendly's own state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.calendly.webhook_decoder import MsgspecWebhookDecoder
from domain.meetings import Cancellation, Invitee, Meeting, MeetingStatus
from domain.ports import MeetingQuery, MeetingView
from tests.support.calendly_world import (
    LOCATIONS,
    NAMES,
    STYLES,
    Delivery,
    Shape,
    Style,
    World,
    deliver,
)
from tests.support.core import Core, build_core


def told(cancellation: Cancellation | None) -> tuple[Any, ...] | None:
    """An invitee's cancellation as every shape tells it: older ones lack `canceler_type`,
    which is then left unknown, never guessed (the meeting's own comes from its event)."""
    if cancellation is None:
        return None
    return (cancellation.canceled_by, cancellation.reason, cancellation.canceled_at)


def _shown(meeting: Meeting, details: str, invitees: Iterable[Invitee]) -> tuple[Any, ...]:
    """A meeting and its invitees in the terms compared (ids and bookkeeping aside)."""
    return (
        meeting.name,
        meeting.start_time,
        meeting.end_time,
        meeting.status,
        json.dumps(meeting.location, sort_keys=True),
        meeting.cancellation,
        details,
        sorted(
            (
                i.invitee_uri,
                i.email,
                i.name,
                i.timezone,
                i.status,
                told(i.cancellation),
                i.rescheduled,
                i.old_invitee_uri,
                i.new_invitee_uri,
                i.no_show,
            )
            for i in invitees
        ),
    )


def seen(views: list[MeetingView]) -> dict[str, Any]:
    """What the user sees of each meeting."""
    return {v.meeting.event_uri: _shown(v.meeting, v.details, v.invitees) for v in views}


def truth(world: World) -> dict[str, Any]:
    """What Calendly has now, in the same terms."""
    calendly = world.calendly
    return {
        uri: _shown(event.meeting, "complete", (calendly.invitees[i] for i in event.invitee_uris))
        for uri, event in calendly.events.items()
    }


async def views_of(core: Core) -> list[MeetingView]:
    async with core.db.factory()("u") as uow:
        return list(await uow.meetings.list("u", MeetingQuery(limit=10_000)))


async def complete_all(core: Core) -> None:
    connection = core.db.connections["u"]
    for _ in range(50):
        _, more = await core.complete_meetings(connection)
        if not more and not any(v.details == "pending" for v in await views_of(core)):
            return
    raise AssertionError("meetings still wait for their details after 50 passes")


shapes = st.builds(
    Shape,
    style=st.sampled_from(STYLES),
    canceler_type=st.booleans(),
    deleted_no_show_null=st.booleans(),
    extras=st.booleans(),
)
operations = st.one_of(
    st.tuples(
        st.just("book"),
        st.sampled_from(NAMES),
        st.sampled_from(LOCATIONS),
        st.integers(1, 500),
    ),
    st.tuples(st.just("add_invitee"), st.integers(0, 50), st.sampled_from(NAMES)),
    st.tuples(st.just("cancel"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("reschedule"), st.integers(0, 50), st.integers(1, 500)),
    st.tuples(st.just("no_show"), st.integers(0, 50), st.booleans()),
    # The worker completes meetings now, with Calendly as it is at this point.
    st.tuples(st.just("complete")),
    # Calendly delivers one of what is in flight (any of them: order is not guaranteed).
    st.tuples(st.just("deliver"), st.integers(0, 50)),
)


async def play(
    steps: list[tuple[Any, ...]],
    id_style: Literal["short", "legacy16", "uuid"],
    shape_of: Callable[[Delivery], Shape],
    order: Callable[[list[Delivery]], list[Delivery]] = list,
    retries: Callable[[list[Delivery]], list[Delivery]] = lambda _sent: [],
) -> World:
    core = build_core()
    core.calendly.id_style = id_style
    host = core.calendly.add_user("ada@example.com", name="Ada Lovelace")
    await core.connect("u", host)
    world = World(calendly=core.calendly, host=host, core=core)
    world.book("Grace Guest", dict(LOCATIONS[0]), 24)
    for step in steps:
        kind = step[0]
        if kind == "book":
            world.book(step[1], dict(step[2]), step[3])
        elif kind == "add_invitee":
            world.add_invitee(step[1], step[2])
        elif kind == "cancel":
            world.cancel(step[1], step[2])
        elif kind == "reschedule":
            world.reschedule(step[1], step[2])
        elif kind == "no_show":
            world.no_show(step[1], step[2])
        elif kind == "complete":
            await core.complete_meetings(core.db.connections["u"])
        elif kind == "deliver" and world.pending:
            delivery = world.pending.pop(step[1] % len(world.pending))
            assert await deliver(world, world.body(delivery, shape_of(delivery))) == "applied"
    # Whatever is still in flight arrives in any order; some deliveries come twice (Calendly
    # retries what it did not see acknowledged), in another shape than the first time.
    rest = order(world.pending)
    world.pending.clear()
    for delivery in [*rest, *retries(world.sent)]:
        assert await deliver(world, world.body(delivery, shape_of(delivery))) in (
            "applied",
            "duplicate",
        )
    await complete_all(core)
    return world


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    steps=st.lists(operations, max_size=14),
    data=st.data(),
    id_style=st.sampled_from(("short", "legacy16", "uuid")),
)
async def test_meetings_end_as_calendly_has_them_whatever_the_shapes_and_order(
    steps: list[tuple[Any, ...]],
    data: st.DataObject,
    id_style: Literal["short", "legacy16", "uuid"],
) -> None:
    drawn: dict[int, Shape] = {}

    def shape_of(delivery: Delivery) -> Shape:
        # Each sending draws its shape (a retry may come in another one).
        key = len(drawn)
        drawn[key] = data.draw(shapes, label=f"shape of delivery {key}")
        return drawn[key]

    world = await play(
        steps,
        id_style,
        shape_of,
        order=lambda pending: data.draw(st.permutations(pending), label="order of the rest"),
        retries=lambda sent: data.draw(
            st.lists(st.sampled_from(sent), max_size=3), label="retried"
        ),
    )
    assert seen(await views_of(world.core)) == truth(world)


@pytest.mark.parametrize("style", STYLES)
async def test_each_shape_alone_gives_the_same_meetings(style: Style) -> None:
    """The same story told wholly in one shape: booking, a group event with one cancel,
    a reschedule, a no-show marked and unmarked, and a cancel by the host."""

    steps: list[tuple[Any, ...]] = [
        ("add_invitee", 0, "Zoë Ångström"),
        ("cancel", 1, False),  # one of the group's two: the meeting stays active
        ("book", "李雷", LOCATIONS[2], 48),
        ("reschedule", 1, 72),
        ("no_show", 0, True),
        ("no_show", 0, False),
        ("book", "Мария", LOCATIONS[1], 96),
        ("cancel", 2, True),
    ]
    steps += [("deliver", 0)] * 12
    world = await play(
        steps, "legacy16", lambda _delivery: Shape(style, True, style != "current", True)
    )
    views = await views_of(world.core)
    assert seen(views) == truth(world)
    statuses = sorted(v.meeting.status for v in views)
    assert statuses.count(MeetingStatus.CANCELED) >= 2  # the rescheduled and the host's cancel
    group = [v for v in views if len(v.invitees) == 2]
    assert group
    assert group[0].meeting.status is MeetingStatus.ACTIVE
    if style != "current":
        assert world.core.calendly.count("get_scheduled_event") > 0
    else:  # everything was in the deliveries: Calendly is not asked
        assert world.core.calendly.count("get_scheduled_event") == 0


def test_the_decoder_marks_only_deliveries_without_the_event() -> None:
    decoder = MsgspecWebhookDecoder()
    core = build_core()
    host = core.calendly.add_user("ada@example.com")
    world = World(calendly=core.calendly, host=host, core=core)
    world.book("Grace", dict(LOCATIONS[0]), 5)
    delivery = world.sent[0]
    for style in STYLES:
        inbound = decoder.decode(world.body(delivery, Shape(style, True, False, True)))
        assert inbound.change is not None
        assert inbound.change.needs_details is (style != "current")
        assert inbound.change.invitee is not None
        assert inbound.change.invitee.name == "Grace"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    event=st.sampled_from(
        (
            "routing_form_submission.created",
            "meeting_recap.created",
            "contact.updated",
            "event_type.deleted",
            "invitee.something_new",
        )
    )
    | st.text(min_size=1, max_size=30).filter(
        lambda e: (
            e not in ("invitee.created", "invitee.canceled")
            and not e.startswith("invitee_no_show.")
        )
    ),
    payload=st.dictionaries(st.text(max_size=12), json_values, max_size=5),
)
async def test_event_types_the_service_does_not_act_on_are_acknowledged_and_kept(
    event: str, payload: dict[str, Any]
) -> None:
    core = build_core()
    host = core.calendly.add_user("ada@example.com")
    await core.connect("u", host)
    world = World(calendly=core.calendly, host=host, core=core)
    body = json.dumps(
        {
            "event": event,
            "created_at": "2030-01-01T12:00:00Z",
            "created_by": host.uri,
            "payload": payload,
        }
    ).encode()
    assert await deliver(world, body) in ("ignored", "stored_aside")
    assert [e.payload for e in core.db.events.values()] == [body]  # kept as it came
    assert await views_of(core) == []


@pytest.mark.parametrize("tail", ["..", "."])
async def test_an_event_uri_that_would_climb_out_of_its_path_is_stored_aside(tail: str) -> None:
    # Its last segment is what the worker would ask Calendly about: "/scheduled_events/.."
    # would name another endpoint. Such a delivery is kept aside, never applied or read.
    core = build_core()
    host = core.calendly.add_user("ada@example.com")
    await core.connect("u", host)
    world = World(calendly=core.calendly, host=host, core=core)
    uri = f"https://api.calendly.test/scheduled_events/{tail}"
    body = json.dumps(
        {
            "event": "invitee.created",
            "created_at": "2030-01-01T12:00:00Z",
            "created_by": host.uri,
            "payload": {"uri": uri + "/invitees/x", "event": uri, "name": "Eve"},
        }
    ).encode()
    assert await deliver(world, body) == "stored_aside"
    assert await views_of(core) == []
