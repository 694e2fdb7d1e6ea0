"""The worker's pass over one connection, against fakes: refresh, repair, sync, back-off."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import (
    CalendlyError,
    CalendlyUnavailable,
    PermissionDenied,
    RateLimited,
    ResourceNotFound,
    TokenRejected,
)
from domain.meetings import MeetingStatus
from domain.model import ConnectionStatus, WebhookStatus
from domain.ports import MaintenanceDue
from domain.usecases.maintain_connection import MaintenanceSchedule
from tests.fakes.storage import meetings_of
from tests.support.core import APP_KEY, Core
from tests.support.deliveries import envelope, invitee_payload, sign


def due_now(core: Core, user_id: str = "u", synced: bool = True) -> MaintenanceDue:
    c = core.db.connections[user_id]
    now = core.clock.now()
    return MaintenanceDue(
        connection_id=c.id,
        user_id=user_id,
        grant_due=now,
        subscription_due=now,
        sync_due=now,
        synced_at=now - timedelta(hours=1) if synced else None,
    )


async def test_a_disabled_subscription_is_replaced_and_the_gap_filled(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    (sub,) = core.calendly.active_subscriptions(ada)
    core.calendly.disable(sub.uri)
    event_uri, _ = core.calendly.book(ada, core.clock.now() + timedelta(days=2))
    result = await core.maintain(due_now(core))
    assert result.error is None
    (fresh,) = core.calendly.active_subscriptions(ada)
    assert fresh.uri != sub.uri
    assert sub.uri not in core.calendly.subscriptions
    assert event_uri in meetings_of(core.db, "u")
    assert result.sync_due is not None
    assert result.sync_due - core.clock.now() >= timedelta(hours=1)


async def test_a_free_plan_is_polled_every_plan_poll_interval(core: Core) -> None:
    # Unwatched, every 30 minutes (PLAN_POLL_SECONDS' default), far sooner than the 6 hours of
    # a connection with webhooks; a watched one is made due sooner by the service (DR-42).
    fred = core.calendly.add_user("fred@example.com", paid=False)
    await core.connect("u", fred)
    event_uri, _ = core.calendly.book(fred, core.clock.now() + timedelta(days=1))
    result = await core.maintain(due_now(core))
    assert event_uri in meetings_of(core.db, "u")
    assert result.sync_due is not None
    assert result.synced_at is not None
    # 30 minutes less up to a tenth of it, drawn at random (connections drift apart)
    assert timedelta(minutes=27) <= result.sync_due - result.synced_at <= timedelta(minutes=30)
    assert core.db.connections["u"].webhook_status is WebhookStatus.UNAVAILABLE_PLAN


async def test_backfill_and_webhooks_converge_to_the_same_rows(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    event_uri, invitee_uri = core.calendly.book(ada, core.clock.now() + timedelta(days=2))
    core.calendly.cancel(invitee_uri, canceler_type="host", reason="busy")
    await core.maintain(due_now(core))
    event_id = event_uri.rsplit("/", 1)[1]
    invitee_id = invitee_uri.rsplit("/", 1)[1]
    # The same booking's created delivery arrives late: the cancel from the backfill stays.
    payload = invitee_payload(host_uri=ada.uri, event_id=event_id, invitee_id=invitee_id)
    payload["uri"] = invitee_uri
    payload["scheduled_event"]["uri"] = event_uri
    body = envelope("invitee.created", payload, ada.uri)
    key = core.db.connections["u"].signing_key
    assert key is not None
    from domain.usecases.handle_webhook_event import WebhookCommand

    stamp = int(core.clock.now().timestamp())
    await core.handle_webhook(
        WebhookCommand(
            body=body,
            signature=sign(body, key.reveal(), stamp),
            webhook_token=core.db.connections["u"].webhook_token,
        )
    )
    meetings = meetings_of(core.db, "u")
    assert list(meetings) == [event_uri]
    meeting, invitees = meetings[event_uri]
    assert meeting.status is MeetingStatus.CANCELED
    assert list(invitees) == [invitee_uri]
    assert APP_KEY  # the app key is configured but not needed here


async def test_a_rate_limit_backs_off_by_its_reset_and_refreshes_nothing(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.calendly.fail_next("list_scheduled_events", RateLimited(429, None, 42.0))
    result = await core.maintain(due_now(core))
    assert result.error is not None
    assert result.sync_due is not None
    assert result.sync_due - core.clock.now() == timedelta(seconds=42)
    assert result.retry_at == result.sync_due  # not claimed again before the reset
    assert result.rate_limited  # waited out, not a failure in a row
    assert core.calendly.count("refresh") == 0


async def test_a_dead_grant_turns_needs_reauth_and_goes_quiet(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.calendly.revoke_all(ada)
    core.clock.advance(timedelta(hours=3))
    result = await core.maintain(due_now(core))
    assert core.db.connections["u"].status is ConnectionStatus.NEEDS_REAUTH
    assert result.sync_due is not None
    assert result.sync_due - core.clock.now() >= timedelta(hours=1)
    calls = core.calendly.count()
    again = await core.maintain(due_now(core))
    assert again.error is None
    assert core.calendly.count() == calls  # nobody is called for a connection that needs its user


def only_grant_due(core: Core, user_id: str = "u") -> MaintenanceDue:
    """A connection whose subscription check and reconciliation are days away."""
    now = core.clock.now()
    return msgspec.structs.replace(
        due_now(core, user_id),
        subscription_due=now + timedelta(days=3),
        sync_due=now + timedelta(days=3),
    )


async def test_a_grant_check_near_the_tokens_expiry_is_the_refresh_it_needs_anyway(
    core: Core,
) -> None:
    # A token within its refresh margin, and nothing but the grant check due: one call, the
    # refresh (that a token's expiry alone schedules nothing is the queue's to show:
    # tests/integration/test_maintenance_queue.py).
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.clock.advance(timedelta(hours=2) - timedelta(minutes=2))  # within the 5-minute margin
    before = core.calendly.count()
    result = await core.maintain(only_grant_due(core))
    assert result.error is None
    assert core.calendly.calls[before:] == ["refresh"]
    assert result.grant_due is not None
    assert timedelta(hours=21) <= result.grant_due - core.clock.now() <= timedelta(days=1)


async def test_a_grant_check_with_a_live_token_is_one_cheap_read(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    before = core.calendly.count()
    result = await core.maintain(only_grant_due(core))
    assert result.error is None
    assert core.calendly.calls[before:] == ["current_user"]
    assert result.subscription_due is None  # untouched
    assert result.sync_due is None


async def test_a_pass_that_calls_calendly_anyway_needs_no_grant_check(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    before = core.calendly.count()
    result = await core.maintain(due_now(core))
    assert "current_user" not in core.calendly.calls[before:]
    assert result.grant_due is not None
    assert result.grant_due - core.clock.now() >= timedelta(hours=21)
    # Both slow kinds come back in about a week (DR-45), spread.
    assert result.subscription_due is not None
    assert timedelta(days=6) <= result.subscription_due - core.clock.now() <= timedelta(days=7)
    assert result.sync_due is not None
    assert timedelta(days=6) <= result.sync_due - core.clock.now() <= timedelta(days=7)


async def test_a_revoked_grant_is_found_by_the_daily_check(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.calendly.revoke_all(ada)
    core.clock.advance(timedelta(hours=20))  # a quiet day: the token expired long ago
    result = await core.maintain(only_grant_due(core))
    assert core.db.connections["u"].status is ConnectionStatus.NEEDS_REAUTH
    assert result.error is not None


async def test_an_idle_paid_connection_costs_at_most_two_calls_a_day(core: Core) -> None:
    # Four weeks of a connection nobody books on, pass by pass as the worker would claim it
    # (each result written back as the queue's COMPLETE does): issue 15's budget, refreshes
    # included, on the fake's count of every call.
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    due = due_now(core)
    start, before = core.clock.now(), core.calendly.count()
    days = 28
    while True:
        at = min(due.grant_due, due.subscription_due, due.sync_due)
        if at >= start + timedelta(days=days):
            break
        core.clock.advance(max(at - core.clock.now(), timedelta(0)))
        result = await core.maintain(due)
        assert result.error is None
        due = msgspec.structs.replace(
            due,
            grant_due=result.grant_due or due.grant_due,
            subscription_due=result.subscription_due or due.subscription_due,
            sync_due=result.sync_due or due.sync_due,
            synced_at=result.synced_at or due.synced_at,
        )
    per_day = (core.calendly.count() - before) / days
    assert 1.0 <= per_day <= 2.0, (per_day, Counter(core.calendly.calls[before:]))


# ------------------------------------------------------------------ back-off (row 30)
@given(failures=st.integers(min_value=0, max_value=10_000))
def test_the_back_off_doubles_up_to_its_cap_with_jitter(failures: int) -> None:
    schedule = MaintenanceSchedule(
        retry_base=timedelta(seconds=30), retry_max=timedelta(minutes=30)
    )
    full = min(30 * 2 ** min(failures, 20), 1800)
    wait = schedule.backoff(failures).total_seconds()
    assert full / 2 <= wait <= full


def test_jitter_spreads_connections_that_failed_together() -> None:
    schedule = MaintenanceSchedule()
    assert len({schedule.backoff(3) for _ in range(20)}) > 1


async def test_an_unexpected_error_backs_off_like_any_other(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    due = due_now(core)
    first = core.maintain.failed(due, KeyError("boom"))
    assert first.error == "unexpected KeyError"
    assert first.retry_at is not None
    assert timedelta(seconds=2.5) <= first.retry_at - core.clock.now() <= timedelta(seconds=5)
    later = core.maintain.failed(
        MaintenanceDue(**{**{f: getattr(due, f) for f in due.__struct_fields__}, "failures": 5}),
        KeyError("boom"),
    )
    assert later.retry_at is not None
    assert later.retry_at - core.clock.now() >= timedelta(seconds=2.5 * 2**5)


async def test_calendly_errors_back_off_and_are_not_claimed_before_the_retry(
    core: Core,
) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.calendly.fail_next("list_scheduled_events", CalendlyUnavailable(503, None, "down"))
    result = await core.maintain(due_now(core))
    assert result.error is not None
    assert result.retry_at is not None
    assert result.retry_at > core.clock.now()
    assert result.sync_due == result.retry_at


async def test_an_upgrade_shows_on_the_next_poll_and_asks_for_webhooks_at_once(core: Core) -> None:
    # The poll's answers carry the plan's limit (500 a minute, not Free's 50): the
    # subscription is checked at the next claim, not a day later.
    fred = core.calendly.add_user("fred@example.com", paid=False)
    await core.connect("u", fred)
    polled = await core.maintain(due_now(core))
    assert polled.subscription_due is not None
    assert polled.subscription_due - core.clock.now() >= timedelta(hours=21)  # the daily recheck
    unchanged = await core.maintain(
        msgspec.structs.replace(only_grant_due(core), sync_due=core.clock.now())
    )
    assert unchanged.subscription_due is None
    fred.paid = True
    upgraded = await core.maintain(
        msgspec.structs.replace(only_grant_due(core), sync_due=core.clock.now())
    )
    assert upgraded.subscription_due == core.clock.now()
    await core.maintain(due_now(core))
    assert core.db.connections["u"].webhook_status is WebhookStatus.ACTIVE


async def test_a_downgrade_shows_on_the_next_call_with_the_token(core: Core) -> None:
    # Here a grant check with a live token (a read of the user). A check that only refreshes
    # carries no bearer, so no limit: then the weekly reads are the next such call (DR-45).
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    assert (await core.maintain(only_grant_due(core))).subscription_due is None
    ada.paid = False
    result = await core.maintain(only_grant_due(core))
    assert result.subscription_due == core.clock.now()


async def test_a_weekly_reconciliation_sees_late_changes_to_meetings_before_the_last_one(
    core: Core,
) -> None:
    # A meeting the day before a sync, canceled after it with the webhook lost: a week later
    # the next sync looks back from the last one, not only from now.
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    event_uri, invitee_uri = core.calendly.book(ada, core.clock.now() - timedelta(days=1))
    first = await core.maintain(due_now(core, synced=False))
    assert first.synced_at is not None
    assert meetings_of(core.db, "u")[event_uri][0].status is MeetingStatus.ACTIVE
    core.clock.advance(timedelta(hours=1))
    core.calendly.cancel(invitee_uri, canceler_type="host", reason="ill")
    core.clock.advance(timedelta(days=7))
    due = msgspec.structs.replace(due_now(core), synced_at=first.synced_at)
    assert (await core.maintain(due)).error is None
    assert meetings_of(core.db, "u")[event_uri][0].status is MeetingStatus.CANCELED


@pytest.mark.parametrize(
    ("error", "checked"),
    [
        (PermissionDenied(403, {"title": "Permission Denied"}), True),
        (ResourceNotFound(404, {"title": "Resource Not Found"}), True),
        (CalendlyUnavailable(503, None, "down"), False),
    ],
)
async def test_a_refusal_from_calendly_has_the_retry_read_the_subscription(
    core: Core, error: CalendlyError, checked: bool
) -> None:
    # Issue 15's trigger: after Calendly says 403 or 404 for a connection, its subscription is
    # checked (at the retry), not a week later; a 5xx alone asks for no such thing. (A 401 is
    # refreshed away, or is a dead grant: the next test.)
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.calendly.fail_next("list_scheduled_events", error, times=2)
    due = msgspec.structs.replace(
        due_now(core), subscription_due=core.clock.now() + timedelta(days=3)
    )
    result = await core.maintain(due)
    assert result.error is not None
    assert result.retry_at is not None
    assert (result.subscription_due == result.retry_at) is checked


async def test_what_the_queue_found_due_is_due_whatever_the_process_clock_says(
    core: Core,
) -> None:
    # The database's clock is a little ahead of this process's: the subscription it claimed
    # the row for is checked, not mistaken for "not yet" (and claimed again at once).
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    ahead = core.clock.now() + timedelta(seconds=2)
    due = msgspec.structs.replace(only_grant_due(core), subscription_due=ahead, claimed_at=ahead)
    result = await core.maintain(due)
    assert result.subscription_due is not None
    assert result.subscription_due - ahead >= timedelta(days=6)


async def test_a_fresh_token_refused_too_is_a_dead_grant_at_once(core: Core) -> None:
    # Issue 16: a 401, a refresh that Calendly accepts, and a 401 again for the fresh token:
    # the connection shows needs_reauth now, not after some later refresh fails.
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    rejected = TokenRejected(401, {"title": "Unauthenticated"})
    core.calendly.fail_next("list_scheduled_events", rejected, times=2)
    result = await core.maintain(due_now(core))
    assert core.db.connections["u"].status is ConnectionStatus.NEEDS_REAUTH
    assert result.error is not None
    assert core.calendly.count("refresh") == 1
