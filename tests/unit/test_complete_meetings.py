"""Meetings completed from Calendly when their deliveries lacked the event (DR-47)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from msgspec.structs import replace

from domain.errors import CalendlyUnavailable, RateLimited, ResourceNotFound, TokenRejected
from domain.meetings import Meeting, MeetingStatus
from domain.ports import MaintenanceDue, MeetingQuery, MeetingView
from domain.usecases.complete_meetings import CompleteMeetings
from tests.support.calendly_world import Shape, World, deliver
from tests.support.core import Core, build_core

LEGACY = Shape("legacy", canceler_type=True, deleted_no_show_null=False, extras=False)


@pytest.fixture
async def world() -> World:
    core = build_core()
    host = core.calendly.add_user("ada@example.com", name="Ada")
    await core.connect("u", host)
    return World(calendly=core.calendly, host=host, core=core)


async def views(core: Core) -> list[MeetingView]:
    async with core.db.factory()("u") as uow:
        return list(await uow.meetings.list("u", MeetingQuery()))


async def send_all(world: World) -> None:
    while world.pending:
        assert await deliver(world, world.body(world.pending.pop(0), LEGACY)) == "applied"


def idle_due(core: Core, enrich: bool = True) -> MaintenanceDue:
    """Nothing due but the meetings' details (when `enrich`)."""
    c = core.db.connections["u"]
    now, later = core.clock.now(), core.clock.now() + timedelta(days=1)
    return MaintenanceDue(
        connection_id=c.id,
        user_id="u",
        grant_due=later,
        subscription_due=later,
        sync_due=later,
        synced_at=now,
        enrich_due=now if enrich else None,
    )


async def test_a_legacy_delivery_shows_what_it_knows_at_once_then_the_event(world: World) -> None:
    world.book("Grace Guest", {"type": "zoom"}, 24)
    await send_all(world)
    (shown,) = await views(world.core)
    # Not an empty card: the invitee is there, and the page knows the rest is on its way.
    assert shown.details == "pending"
    assert shown.meeting.name is None
    assert [i.name for i in shown.invitees] == ["Grace Guest"]
    assert world.core.db.enrich_due  # the worker was told
    read, next_due = await world.core.complete_meetings(world.core.db.connections["u"])
    assert (read, next_due) == (1, None)
    (done,) = await views(world.core)
    assert done.details == "complete"
    assert done.meeting.name == "Intro · Grace Guest"
    assert done.meeting.start_time is not None
    assert done.meeting.location == {"type": "zoom"}


async def test_a_cancel_delivered_while_the_event_is_read_has_it_read_again(
    world: World,
) -> None:
    world.book("Grace Guest", {"type": "zoom"}, 24)
    await send_all(world)
    calendly = world.core.calendly
    read_event = calendly.get_scheduled_event
    connection = world.core.db.connections["u"]

    async def read_then_cancel(access_token: object, event_uri: str) -> Meeting:
        answer = await read_event(access_token, event_uri)  # type: ignore[arg-type]
        # Calendly answered "active"; before that answer is merged, the invitee cancels and
        # the delivery saying so is acknowledged.
        world.cancel(0, by_host=False)
        await send_all(world)
        return answer

    calendly.get_scheduled_event = read_then_cancel  # type: ignore[method-assign]
    await world.core.complete_meetings(connection)
    (stale,) = await views(world.core)
    assert stale.details == "pending"  # the stale read did not meet the newer request
    assert stale.meeting.status is MeetingStatus.ACTIVE
    calendly.get_scheduled_event = read_event  # type: ignore[method-assign]
    await world.core.complete_meetings(connection)
    (done,) = await views(world.core)
    assert (done.details, done.meeting.status) == ("complete", MeetingStatus.CANCELED)


async def test_a_group_event_with_one_invitee_gone_stays_active(world: World) -> None:
    world.book("Grace Guest", {"type": "zoom"}, 24)
    world.add_invitee(0, "Zoë")
    world.cancel(1, by_host=False)
    await send_all(world)
    await world.core.complete_meetings(world.core.db.connections["u"])
    (shown,) = await views(world.core)
    assert shown.meeting.status is MeetingStatus.ACTIVE
    assert sorted((i.name, i.status) for i in shown.invitees) == [
        ("Grace Guest", MeetingStatus.ACTIVE),
        ("Zoë", MeetingStatus.CANCELED),
    ]


async def test_an_event_calendly_will_not_show_is_marked_and_the_others_completed(
    world: World,
) -> None:
    world.book("Grace Guest", {"type": "zoom"}, 24)
    world.book("Zoë", {"type": "zoom"}, 48)
    await send_all(world)
    gone = next(iter(world.core.calendly.events))
    world.core.calendly.fail_next("get_scheduled_event", ResourceNotFound(404, None))
    await world.core.complete_meetings(world.core.db.connections["u"])
    shown = {v.meeting.event_uri: v for v in await views(world.core)}
    assert (shown[gone].details, shown[gone].details_error) == (
        "unavailable",
        "Calendly answered 404 for this event",
    )
    (other,) = [v for uri, v in shown.items() if uri != gone]
    assert other.details == "complete"


async def test_a_pass_completes_meetings_without_spending_a_grant_check(world: World) -> None:
    world.book("Grace Guest", {"type": "zoom"}, 24)
    await send_all(world)
    core = world.core
    core.calendly.calls.clear()
    result = await core.maintain(idle_due(core))
    assert core.calendly.calls == ["get_scheduled_event"]  # the read proved the grant too
    assert (result.enriched, result.enrich_due, result.error) == (True, None, None)
    assert result.grant_due is not None
    # Nothing wanted and nothing else due: nothing is asked of Calendly.
    core.calendly.calls.clear()
    result = await core.maintain(idle_due(core, enrich=False))
    assert core.calendly.calls == []
    assert (result.enriched, result.grant_due) == (False, None)


async def test_a_failing_read_backs_off_for_that_meeting_alone_and_shows(world: World) -> None:
    # One event's read fails (Calendly's 5xx, or an answer that cannot be read): that meeting
    # shows the trouble and waits out a back-off of its own; the other is completed and the
    # pass goes on to the connection's other work (here the grant check it was due for).
    world.book("Grace Guest", {"type": "zoom"}, 24)
    world.book("Zoë", {"type": "zoom"}, 48)
    await send_all(world)
    core = world.core
    troubled = next(iter(core.calendly.events))
    core.calendly.fail_next("get_scheduled_event", CalendlyUnavailable(503, None, "down"))
    due = replace(idle_due(core), grant_due=core.clock.now())
    result = await core.maintain(due)
    assert result.error is None
    assert result.grant_due is not None
    assert result.enriched
    assert result.enrich_due is not None  # the retry's time: the request is kept
    shown = {v.meeting.event_uri: v for v in await views(core)}
    assert (shown[troubled].details, shown[troubled].details_error) == (
        "pending",
        "Calendly answered 503 for this event; trying again",
    )
    (other,) = [v for uri, v in shown.items() if uri != troubled]
    assert other.details == "complete"
    # Not read again before its back-off: the next pass has nothing to read.
    core.calendly.calls.clear()
    read, _ = await core.complete_meetings(core.db.connections["u"])
    assert read == 0
    assert "get_scheduled_event" not in core.calendly.calls


async def test_a_rate_limit_stops_the_batch_and_backs_the_pass_off(world: World) -> None:
    world.book("Grace Guest", {"type": "zoom"}, 24)
    await send_all(world)
    core = world.core
    core.calendly.fail_next("get_scheduled_event", RateLimited(429, None, 30.0))
    result = await core.maintain(idle_due(core))
    assert result.rate_limited
    assert result.retry_at is not None
    assert result.enrich_due == result.retry_at
    (shown,) = await views(core)
    assert (shown.details, shown.details_error) == ("pending", None)


async def test_a_refused_token_is_refreshed_once_for_the_read(world: World) -> None:
    world.book("Grace Guest", {"type": "zoom"}, 24)
    await send_all(world)
    core = world.core
    core.calendly.fail_next("get_scheduled_event", TokenRejected(401, None))
    await core.complete_meetings(core.db.connections["u"])
    (shown,) = await views(core)
    assert shown.details == "complete"
    assert core.calendly.count("refresh") == 1


async def test_more_than_a_batch_comes_back_at_once(world: World) -> None:
    for n in range(3):
        world.book(f"Guest {n}", {"type": "zoom"}, 24 + n)
    await send_all(world)
    core = world.core
    small = CompleteMeetings(core.db.factory(), core.calendly, core.tokens, batch=2)
    read, next_due = await small(core.db.connections["u"])
    assert read == 2
    assert next_due is not None  # one is still wanted, due already
    read, next_due = await small(core.db.connections["u"])
    assert (read, next_due) == (1, None)
    assert {v.details for v in await views(core)} == {"complete"}


async def test_a_sync_completes_what_was_asked_before_a_reconnect(world: World) -> None:
    # A reconnect makes a new maintenance row (no `enrich_due`) and asks for a sync: the
    # requests made before it are found by that pass.
    world.book("Grace Guest", {"type": "zoom"}, 24)
    await send_all(world)
    core = world.core
    due = replace(idle_due(core, enrich=False), sync_due=core.clock.now())
    result = await core.maintain(due)
    assert result.enriched
    assert "get_scheduled_event" in core.calendly.calls
    assert {v.details for v in await views(core)} == {"complete"}
