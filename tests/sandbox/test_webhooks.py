"""Webhook delivery over real HTTP: signing, envelopes, payloads, ordering, retries, disabling."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import pytest

from calendly_sandbox import OAuthClient, Settings
from tests.support.sandbox import (
    REDIRECT_URI,
    Received,
    SandboxDriver,
    Tokens,
    WebhookReceiver,
    webhook_receiver,
)

T = TypeVar("T")

INVITEE_EVENTS = [
    "invitee.created",
    "invitee.canceled",
    "invitee_no_show.created",
    "invitee_no_show.deleted",
]
SIGNATURE = "Calendly-Webhook-Signature"
START = "2030-03-05T14:30:00.000000Z"
LATER = "2030-03-07T09:00:00.000000Z"


# ------------------------------------------------------------------ helpers
def last_segment(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def user_id(tokens: Tokens) -> str:
    return last_segment(tokens.owner)


def envelope(received: Received) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(received.body)
    return data


def header(received: Received, name: str) -> str | None:
    return next((v for k, v in received.headers.items() if k.lower() == name.lower()), None)


def verify_signature(key: str, value: str | None, body: bytes) -> int:
    """Check `t=<unix>,v1=<hex>` as a receiver must (HMAC-SHA256 over "t." + raw body); return t."""
    assert value is not None, "no signature header"
    parts = dict(item.strip().split("=", 1) for item in value.split(","))
    assert set(parts) == {"t", "v1"}, value
    v1 = parts["v1"]
    assert v1 == v1.lower()
    assert len(v1) == 64
    message = parts["t"].encode("ascii") + b"." + body
    expected = hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, v1), "signature does not verify"
    return int(parts["t"])


def signature_verifies(key: str, value: str | None, body: bytes) -> bool:
    try:
        verify_signature(key, value, body)
    except AssertionError:
        return False
    return True


def seconds_from_now(iso_time: str) -> float:
    return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp() - time.time()


async def eventually(check: Callable[[], Awaitable[T | None]], seconds: float = 5.0) -> T:
    """Poll `check` until it returns something other than None, failing after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds} s")
        await asyncio.sleep(0.02)


async def subscribe(
    sandbox: SandboxDriver,
    tokens: Tokens,
    url: str,
    events: list[str] | None = None,
    signing_key: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "url": url,
        "events": INVITEE_EVENTS if events is None else events,
        "organization": tokens.organization,
        "scope": "user",
        "user": tokens.owner,
    }
    if signing_key is not None:
        body["signing_key"] = signing_key
    status, data, _ = await sandbox.api(
        "POST", "/webhook_subscriptions", tokens.access_token, json=body
    )
    assert status == 201, data
    resource: dict[str, Any] = data["resource"]
    return resource


async def get_subscription(
    sandbox: SandboxDriver, tokens: Tokens, subscription: dict[str, Any]
) -> dict[str, Any]:
    path = f"/webhook_subscriptions/{last_segment(subscription['uri'])}"
    status, data, _ = await sandbox.api("GET", path, tokens.access_token)
    assert status == 200, data
    resource: dict[str, Any] = data["resource"]
    return resource


async def deliveries_to(
    sandbox: SandboxDriver, subscription: dict[str, Any]
) -> list[dict[str, Any]]:
    sub_id = last_segment(subscription["uri"])
    return [d for d in await sandbox.deliveries() if d["subscription"] == sub_id]


async def book(sandbox: SandboxDriver, tokens: Tokens, **spec: Any) -> dict[str, Any]:
    return await sandbox.book(user_id(tokens), wait=True, **spec)


def guests(count: int) -> list[dict[str, str]]:
    return [{"name": f"Guest {n}", "email": f"guest{n}@example.org"} for n in range(count)]


async def cancel_invitee(
    sandbox: SandboxDriver, invitee_uri: str, canceler_type: str = "invitee"
) -> dict[str, Any]:
    result: dict[str, Any] = await sandbox.control(
        "POST",
        f"/_sandbox/invitees/{last_segment(invitee_uri)}/cancel",
        {"canceler_type": canceler_type, "reason": "Conflict", "wait": True},
        expect=201,
    )
    return result


def closed_port_url() -> str:
    """A loopback URL nobody listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/webhooks/calendly"


@pytest.fixture
async def host(sandbox: SandboxDriver) -> Tokens:
    return await sandbox.connect("ada@example.com")


# --------------------------------------------------------- signing & envelope
async def test_booking_delivers_invitee_created_signed_with_the_subscriptions_own_key(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver, oauth_client: OAuthClient
) -> None:
    own_key = secrets.token_urlsafe(24)
    sub = await subscribe(sandbox, host, receiver.url, signing_key=own_key)
    booked = await book(sandbox, host)

    [got] = await receiver.wait_for(1)
    t = verify_signature(own_key, header(got, SIGNATURE), got.body)
    assert abs(t - time.time()) < 60
    assert oauth_client.webhook_signing_key is not None
    assert not signature_verifies(
        oauth_client.webhook_signing_key, header(got, SIGNATURE), got.body
    )

    data = envelope(got)
    assert data["event"] == "invitee.created"
    assert abs(seconds_from_now(data["created_at"])) < 60
    assert data["created_by"] == sub["creator"] == host.owner
    payload = data["payload"]
    event_uri = booked["event"]["uri"]
    assert payload["uri"] == booked["invitees"][0]["uri"]
    assert payload["uri"].startswith(f"{event_uri}/invitees/")
    assert payload["event"] == event_uri
    assert payload["email"] == "grace@example.org"
    assert payload["status"] == "active"
    assert payload["rescheduled"] is False
    assert payload["old_invitee"] is None
    scheduled = payload["scheduled_event"]
    assert scheduled["uri"] == event_uri
    assert scheduled["status"] == "active"
    assert scheduled["start_time"] == START
    assert scheduled["event_memberships"][0]["user"] == host.owner
    assert scheduled["invitees_counter"] == {"total": 1, "active": 1, "limit": 1}


async def test_without_its_own_key_a_subscription_is_signed_with_the_app_key(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver, oauth_client: OAuthClient
) -> None:
    await subscribe(sandbox, host, receiver.url)
    await book(sandbox, host)

    [got] = await receiver.wait_for(1)
    assert oauth_client.webhook_signing_key is not None
    t = verify_signature(oauth_client.webhook_signing_key, header(got, SIGNATURE), got.body)
    assert abs(t - time.time()) < 60
    assert envelope(got)["event"] == "invitee.created"


async def test_no_signature_header_is_sent_when_no_key_applies(
    sandbox: SandboxDriver, http: aiohttp.ClientSession, receiver: WebhookReceiver
) -> None:
    keyless = OAuthClient(
        client_id="keyless-client",
        client_secret=secrets.token_urlsafe(24),
        redirect_uris=[REDIRECT_URI],
    )
    await sandbox.control(
        "POST",
        "/_sandbox/clients",
        {
            "client_id": keyless.client_id,
            "client_secret": keyless.client_secret,
            "redirect_uris": keyless.redirect_uris,
        },
        expect=201,
    )
    other = SandboxDriver(http=http, url=sandbox.url, client=keyless)
    tokens = await other.connect("nokey@example.com")
    sub = await subscribe(other, tokens, receiver.url)
    await book(other, tokens)

    [got] = await receiver.wait_for(1)
    assert header(got, SIGNATURE) is None
    assert envelope(got)["event"] == "invitee.created"
    [logged] = await deliveries_to(sandbox, sub)
    assert logged["state"] == "delivered"


# ------------------------------------------------------------------ routing
async def test_another_hosts_booking_does_not_reach_the_subscription(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver
) -> None:
    other_host = await sandbox.connect("bob@example.com")
    mine = await subscribe(sandbox, host, receiver.url)
    async with webhook_receiver() as other_receiver:
        theirs = await subscribe(sandbox, other_host, other_receiver.url)
        their_booking = await book(sandbox, other_host)

        [got] = await other_receiver.wait_for(1)
        assert envelope(got)["payload"]["uri"] == their_booking["invitees"][0]["uri"]
        assert receiver.received == []
        assert await deliveries_to(sandbox, mine) == []

        my_booking = await book(sandbox, host)
        [mine_got] = await receiver.wait_for(1)
        assert envelope(mine_got)["payload"]["uri"] == my_booking["invitees"][0]["uri"]
        assert len(other_receiver.received) == 1
        assert len(await deliveries_to(sandbox, theirs)) == 1


async def test_only_subscribed_events_are_delivered(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver
) -> None:
    sub = await subscribe(sandbox, host, receiver.url, events=["invitee.canceled"])
    booked = await book(sandbox, host)
    assert receiver.received == []
    assert booked["deliveries"] == []

    await cancel_invitee(sandbox, booked["invitees"][0]["uri"])
    [got] = await receiver.wait_for(1)
    assert envelope(got)["event"] == "invitee.canceled"
    assert [d["event"] for d in await deliveries_to(sandbox, sub)] == ["invitee.canceled"]


@pytest.mark.parametrize("how", ["disabled", "deleted"])
async def test_a_disabled_or_deleted_subscription_gets_nothing(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver, how: str
) -> None:
    sub = await subscribe(sandbox, host, receiver.url)
    sub_id = last_segment(sub["uri"])
    if how == "disabled":
        disabled = await sandbox.control(
            "POST", f"/_sandbox/subscriptions/{sub_id}/disable", expect=200
        )
        assert disabled["state"] == "disabled"
    else:
        status, _, _ = await sandbox.api(
            "DELETE", f"/webhook_subscriptions/{sub_id}", host.access_token
        )
        assert status == 204

    booked = await book(sandbox, host)
    await cancel_invitee(sandbox, booked["invitees"][0]["uri"])

    assert booked["deliveries"] == []
    assert receiver.received == []
    assert await deliveries_to(sandbox, sub) == []


# ------------------------------------------------------------- cancellations
@pytest.mark.parametrize("canceler_type", ["invitee", "host"])
async def test_a_cancel_delivers_invitee_canceled_with_who_canceled(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver, canceler_type: str
) -> None:
    await subscribe(sandbox, host, receiver.url)
    booked = await book(sandbox, host)
    invitee_uri = booked["invitees"][0]["uri"]
    await cancel_invitee(sandbox, invitee_uri, canceler_type)

    created, canceled = await receiver.wait_for(2)
    assert envelope(created)["event"] == "invitee.created"
    data = envelope(canceled)
    assert data["event"] == "invitee.canceled"
    payload = data["payload"]
    assert payload["uri"] == invitee_uri
    assert payload["status"] == "canceled"
    assert payload["rescheduled"] is False
    assert payload["cancellation"]["canceler_type"] == canceler_type
    assert payload["cancellation"]["reason"] == "Conflict"
    scheduled = payload["scheduled_event"]
    assert scheduled["status"] == "canceled"
    assert scheduled["invitees_counter"]["active"] == 0
    assert scheduled["invitees_counter"]["total"] == 1


async def test_the_event_stays_active_while_an_invitee_remains(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver
) -> None:
    await subscribe(sandbox, host, receiver.url, events=["invitee.canceled"])
    booked = await book(sandbox, host, invitees=guests(2))
    first, second = (i["uri"] for i in booked["invitees"])

    await cancel_invitee(sandbox, first)
    [one] = await receiver.wait_for(1)
    scheduled = envelope(one)["payload"]["scheduled_event"]
    assert envelope(one)["payload"]["uri"] == first
    assert scheduled["status"] == "active"
    assert scheduled["invitees_counter"] == {"total": 2, "active": 1, "limit": 2}

    await cancel_invitee(sandbox, second)
    _, two = await receiver.wait_for(2)
    scheduled = envelope(two)["payload"]["scheduled_event"]
    assert envelope(two)["payload"]["uri"] == second
    assert scheduled["status"] == "canceled"
    assert scheduled["invitees_counter"] == {"total": 2, "active": 0, "limit": 2}


async def test_canceling_the_whole_event_cancels_every_invitee(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver
) -> None:
    await subscribe(sandbox, host, receiver.url, events=["invitee.canceled"])
    booked = await book(sandbox, host, invitees=guests(3))
    event_id = last_segment(booked["event"]["uri"])
    await sandbox.control(
        "POST", f"/_sandbox/events/{event_id}/cancel", {"reason": "Host ill", "wait": True}, 201
    )

    got = await receiver.wait_for(3)
    payloads = [envelope(r)["payload"] for r in got]
    assert {p["uri"] for p in payloads} == {i["uri"] for i in booked["invitees"]}
    for payload in payloads:
        assert payload["status"] == "canceled"
        assert payload["cancellation"]["canceler_type"] == "host"
        assert payload["scheduled_event"]["uri"] == booked["event"]["uri"]
    assert payloads[-1]["scheduled_event"]["status"] == "canceled"
    assert payloads[-1]["scheduled_event"]["invitees_counter"]["active"] == 0


# --------------------------------------------------------------- reschedule
@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("canceled_first", ["invitee.canceled", "invitee.created"]),
        ("created_first", ["invitee.created", "invitee.canceled"]),
    ],
)
async def test_a_reschedule_delivers_the_linked_pair_in_the_order_asked(
    sandbox: SandboxDriver,
    host: Tokens,
    receiver: WebhookReceiver,
    order: str,
    expected: list[str],
) -> None:
    await subscribe(sandbox, host, receiver.url)
    booked = await book(sandbox, host)
    old_invitee = booked["invitees"][0]["uri"]
    moved = await sandbox.control(
        "POST",
        f"/_sandbox/invitees/{last_segment(old_invitee)}/reschedule",
        {"start_time": LATER, "order": order, "wait": True},
        expect=201,
    )
    new_invitee = moved["new_invitee"]["uri"]

    got = await receiver.wait_for(3)
    pair = [envelope(r) for r in got[1:]]
    assert [d["event"] for d in pair] == expected
    by_event = {d["event"]: d["payload"] for d in pair}

    canceled = by_event["invitee.canceled"]
    assert canceled["uri"] == old_invitee
    assert canceled["rescheduled"] is True
    assert canceled["new_invitee"] == new_invitee
    assert canceled["status"] == "canceled"
    assert canceled["scheduled_event"]["uri"] == booked["event"]["uri"]

    created = by_event["invitee.created"]
    assert created["uri"] == new_invitee
    assert created["old_invitee"] == old_invitee
    assert created["status"] == "active"
    assert created["event"] != booked["event"]["uri"]
    assert created["scheduled_event"]["uri"] == created["event"]
    assert created["scheduled_event"]["start_time"] == LATER


# ----------------------------------------------------------------- no-shows
async def test_marking_and_unmarking_a_no_show_delivers_both_events(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver
) -> None:
    await subscribe(
        sandbox, host, receiver.url, events=["invitee_no_show.created", "invitee_no_show.deleted"]
    )
    booked = await book(sandbox, host)
    invitee_uri = booked["invitees"][0]["uri"]
    path = f"/_sandbox/invitees/{last_segment(invitee_uri)}/no_show"

    await sandbox.control("POST", path, {"wait": True}, expect=201)
    [marked] = await receiver.wait_for(1)
    data = envelope(marked)
    assert data["event"] == "invitee_no_show.created"
    assert data["payload"]["uri"] == invitee_uri
    no_show = data["payload"]["no_show"]
    assert set(no_show) == {"uri", "created_at"}
    assert abs(seconds_from_now(no_show["created_at"])) < 60

    await sandbox.control("DELETE", path, {"wait": True}, expect=201)
    _, unmarked = await receiver.wait_for(2)
    data = envelope(unmarked)
    assert data["event"] == "invitee_no_show.deleted"
    assert data["payload"]["uri"] == invitee_uri
    assert data["payload"]["no_show"]["uri"] == no_show["uri"]


# -------------------------------------------------------------- group events
async def test_a_group_event_delivers_one_invitee_created_per_invitee(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver
) -> None:
    await subscribe(sandbox, host, receiver.url)
    booked = await book(sandbox, host, invitees=guests(3), invitee_limit=5)
    event_uri = booked["event"]["uri"]
    added = await sandbox.control(
        "POST",
        f"/_sandbox/events/{last_segment(event_uri)}/invitees",
        {"name": "Late Guest", "email": "late@example.org", "wait": True},
        expect=201,
    )

    got = await receiver.wait_for(4)
    payloads = [envelope(r)["payload"] for r in got]
    assert all(envelope(r)["event"] == "invitee.created" for r in got)
    assert [p["uri"] for p in payloads] == [
        *(i["uri"] for i in booked["invitees"]),
        added["invitee"]["uri"],
    ]
    assert {p["scheduled_event"]["uri"] for p in payloads} == {event_uri}
    assert payloads[-1]["scheduled_event"]["invitees_counter"] == {
        "total": 4,
        "active": 4,
        "limit": 5,
    }


# ------------------------------------------------- duplicates, hold, redeliver
async def test_duplicate_deliveries_send_each_body_twice(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver, oauth_client: OAuthClient
) -> None:
    await sandbox.settings(duplicate_deliveries=1)
    sub = await subscribe(sandbox, host, receiver.url)
    booked = await book(sandbox, host)
    await cancel_invitee(sandbox, booked["invitees"][0]["uri"])

    got = await receiver.wait_for(4)
    assert len(got) == 4
    assert got[0].body == got[1].body
    assert got[2].body == got[3].body
    assert [envelope(r)["event"] for r in got[::2]] == ["invitee.created", "invitee.canceled"]
    assert oauth_client.webhook_signing_key is not None
    for r in got:
        verify_signature(oauth_client.webhook_signing_key, header(r, SIGNATURE), r.body)
    assert [d["copy"] for d in await deliveries_to(sandbox, sub)] == [0, 1, 0, 1]


@pytest.mark.parametrize("order", ["fifo", "reverse"])
async def test_held_deliveries_are_sent_on_release_in_the_order_asked(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver, order: str
) -> None:
    await sandbox.settings(hold_deliveries=True)
    sub = await subscribe(sandbox, host, receiver.url)
    booked = await book(sandbox, host, invitees=guests(3))
    await cancel_invitee(sandbox, booked["invitees"][0]["uri"])
    assert receiver.received == []
    assert {d["state"] for d in await deliveries_to(sandbox, sub)} == {"held"}

    released = await sandbox.control(
        "POST", "/_sandbox/deliveries/release", {"order": order, "wait": True}, expect=200
    )
    assert released == {"released": 4}

    got = await receiver.wait_for(4)
    sent = [(envelope(r)["event"], envelope(r)["payload"]["email"]) for r in got]
    in_order = [
        ("invitee.created", "guest0@example.org"),
        ("invitee.created", "guest1@example.org"),
        ("invitee.created", "guest2@example.org"),
        ("invitee.canceled", "guest0@example.org"),
    ]
    assert sent == (in_order if order == "fifo" else in_order[::-1])
    assert {d["state"] for d in await deliveries_to(sandbox, sub)} == {"delivered"}


async def test_redeliver_sends_the_same_body_with_a_fresh_signature(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver, oauth_client: OAuthClient
) -> None:
    key = oauth_client.webhook_signing_key
    assert key is not None
    sub = await subscribe(sandbox, host, receiver.url)
    await book(sandbox, host)
    [first] = await receiver.wait_for(1)
    first_t = verify_signature(key, header(first, SIGNATURE), first.body)
    [logged] = await deliveries_to(sandbox, sub)

    # Let the clock pass the first signature's second, so a fresh signature must differ.
    async def next_second() -> bool | None:
        return True if time.time() >= first_t + 1 else None

    await eventually(next_second, seconds=3)
    again = await sandbox.control(
        "POST", f"/_sandbox/deliveries/{logged['id']}/redeliver", {"wait": True}, expect=201
    )
    assert again["id"] != logged["id"]
    assert again["state"] == "delivered"

    _, second = await receiver.wait_for(2)
    assert second.body == first.body
    second_t = verify_signature(key, header(second, SIGNATURE), second.body)
    assert second_t > first_t
    assert header(second, SIGNATURE) != header(first, SIGNATURE)


# -------------------------------------------------------------- legacy shape
async def test_legacy_payloads_carry_only_the_event_uri_and_a_canceled_flag(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver
) -> None:
    await sandbox.settings(payload_style="legacy")
    await subscribe(sandbox, host, receiver.url)
    booked = await book(sandbox, host)
    await cancel_invitee(sandbox, booked["invitees"][0]["uri"])

    created, canceled = (envelope(r) for r in await receiver.wait_for(2))
    for data in (created, canceled):
        assert "scheduled_event" not in data["payload"]
        assert data["payload"]["event"] == booked["event"]["uri"]
    assert created["event"] == "invitee.created"
    assert created["payload"]["canceled"] is False
    assert canceled["event"] == "invitee.canceled"
    assert canceled["payload"]["canceled"] is True
    assert canceled["payload"]["status"] == "canceled"


async def test_one_user_can_send_the_legacy_shape_while_the_world_sends_todays(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver
) -> None:
    # Issue 16: older shapes for any one user, so a test can mix them over real HTTP.
    changed = await sandbox.control(
        "PATCH", f"/_sandbox/users/{user_id(host)}", {"payload_style": "legacy"}, expect=200
    )
    assert changed["payload_style"] == "legacy"
    await subscribe(sandbox, host, receiver.url)
    await book(sandbox, host)
    (legacy,) = (envelope(r) for r in await receiver.wait_for(1))
    assert "scheduled_event" not in legacy["payload"]
    assert legacy["payload"]["canceled"] is False
    await sandbox.control(
        "PATCH", f"/_sandbox/users/{user_id(host)}", {"payload_style": "current"}, expect=200
    )
    await book(sandbox, host)
    current = envelope((await receiver.wait_for(2))[1])
    assert "scheduled_event" in current["payload"]
    assert "canceled" not in current["payload"]


# ------------------------------------------------------------------ retries
@pytest.mark.parametrize("failures", [[500, 503, 500], [400, 404, 410]])
async def test_a_failed_delivery_is_retried_until_the_receiver_accepts(
    sandbox: SandboxDriver,
    host: Tokens,
    receiver: WebhookReceiver,
    oauth_client: OAuthClient,
    failures: list[int],
) -> None:
    receiver.script = list(failures)
    sub = await subscribe(sandbox, host, receiver.url)
    await book(sandbox, host)

    async def delivered() -> dict[str, Any] | None:
        [d] = await deliveries_to(sandbox, sub)
        return d if d["state"] == "delivered" else None

    done = await eventually(delivered)
    assert [a["status"] for a in done["attempts"]] == [*failures, 200]
    got = await receiver.wait_for(4)
    assert len({r.body for r in got}) == 1
    assert oauth_client.webhook_signing_key is not None
    for r in got:
        verify_signature(oauth_client.webhook_signing_key, header(r, SIGNATURE), r.body)
    after = await get_subscription(sandbox, host, sub)
    assert after["state"] == "active"
    assert after["retry_started_at"] is None


async def test_a_receiver_slower_than_the_read_timeout_counts_as_a_failure(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver
) -> None:
    await sandbox.settings(delivery_read_timeout=0.1)
    receiver.pauses = [0.5]
    sub = await subscribe(sandbox, host, receiver.url)
    await book(sandbox, host)

    async def delivered() -> dict[str, Any] | None:
        [d] = await deliveries_to(sandbox, sub)
        return d if d["state"] == "delivered" else None

    done = await eventually(delivered)
    timed_out, accepted = done["attempts"]
    assert timed_out["status"] is None
    assert timed_out["error"]
    assert accepted["status"] == 200
    assert len(receiver.received) == 2


async def test_retry_started_at_is_set_while_retrying_and_cleared_after_success(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver
) -> None:
    # First retry after 60 virtual seconds = 0.6 s real time: long enough to look.
    await sandbox.settings(delivery_time_scale=0.01)
    receiver.script = [500]
    sub = await subscribe(sandbox, host, receiver.url)
    await book(sandbox, host)

    retrying = await get_subscription(sandbox, host, sub)
    assert retrying["retry_started_at"] is not None
    assert abs(seconds_from_now(retrying["retry_started_at"])) < 60
    assert retrying["state"] == "active"

    async def cleared() -> dict[str, Any] | None:
        current = await get_subscription(sandbox, host, sub)
        return current if current["retry_started_at"] is None else None

    after = await eventually(cleared)
    assert after["state"] == "active"
    assert len(receiver.received) == 2
    [logged] = await deliveries_to(sandbox, sub)
    assert [a["status"] for a in logged["attempts"]] == [500, 200]


def attempts_in_window(base: float, window: float) -> int:
    """First attempt plus every retry whose doubling back-off still ends inside the window."""
    attempts, waited, delay = 1, 0.0, base
    while waited + delay <= window:
        waited += delay
        delay *= 2
        attempts += 1
    return attempts


async def test_a_receiver_that_always_fails_gets_the_subscription_disabled(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver, sandbox_settings: Settings
) -> None:
    receiver.script = [500] * 100
    sub = await subscribe(sandbox, host, receiver.url)
    await book(sandbox, host)

    async def disabled() -> dict[str, Any] | None:
        current = await get_subscription(sandbox, host, sub)
        return current if current["state"] == "disabled" else None

    await eventually(disabled)
    [failed] = await deliveries_to(sandbox, sub)
    assert failed["state"] == "failed"
    expected = attempts_in_window(sandbox_settings.retry_base, sandbox_settings.retry_window)
    assert len(failed["attempts"]) == expected
    assert {a["status"] for a in failed["attempts"]} == {500}
    assert len(receiver.received) == expected

    booked = await book(sandbox, host)
    await cancel_invitee(sandbox, booked["invitees"][0]["uri"])
    assert booked["deliveries"] == []
    assert len(receiver.received) == expected
    assert len(await deliveries_to(sandbox, sub)) == 1
    assert (await get_subscription(sandbox, host, sub))["state"] == "disabled"


async def test_an_unreachable_callback_gets_the_subscription_disabled(
    sandbox: SandboxDriver, host: Tokens
) -> None:
    sub = await subscribe(sandbox, host, closed_port_url())
    await book(sandbox, host)

    async def disabled() -> dict[str, Any] | None:
        current = await get_subscription(sandbox, host, sub)
        return current if current["state"] == "disabled" else None

    await eventually(disabled)
    [failed] = await deliveries_to(sandbox, sub)
    assert failed["state"] == "failed"
    assert len(failed["attempts"]) > 1
    assert all(a["status"] is None and a["error"] for a in failed["attempts"])

    booked = await book(sandbox, host)
    assert booked["deliveries"] == []
    assert len(await deliveries_to(sandbox, sub)) == 1


async def test_a_redirect_counts_as_a_failure_and_is_not_followed(
    sandbox: SandboxDriver, host: Tokens, receiver: WebhookReceiver
) -> None:
    async with webhook_receiver() as elsewhere:
        receiver.script = [307, 301]
        receiver.location = elsewhere.url
        sub = await subscribe(sandbox, host, receiver.url)
        await book(sandbox, host)

        async def delivered() -> dict[str, Any] | None:
            [d] = await deliveries_to(sandbox, sub)
            return d if d["state"] == "delivered" else None

        done = await eventually(delivered)
        assert [a["status"] for a in done["attempts"]] == [307, 301, 200]
        assert len(receiver.received) == 3
        assert elsewhere.received == []
