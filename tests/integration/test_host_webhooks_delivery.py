"""Host webhooks end to end over real HTTP (DR-32, DR-34): the use cases on Postgres and the
sandbox write changes, the dispatcher (entrypoints/service/host_webhooks.py) POSTs them, and a
receiver in this test VERIFIES every delivery with the `standardwebhooks` package.

Covered: a booking -> `meeting.created` once, with the snapshot and the per-user sequence; a
no-show and a cancel; connect and disconnect; a receiver answering 503 for a while, then back ->
everything delivered once, each user's order kept; 410 disables the endpoint (and `enable`
resumes it); an endpoint's event filter drops what it did not ask for; a backlog longer than a
page goes out a page per claim; a slow endpoint keeps its lease through a long page; a stream
whose task stalled past its lease is not sent twice by the same dispatcher; after a 410 the
streams in flight stop.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import psycopg
import psycopg_pool
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from adapters.host_webhooks import HostWebhookSender
from adapters.postgres.host_webhooks import PostgresHostWebhooks
from domain.meetings import Invitee, Meeting, MeetingStatus
from domain.ports import MeetingChange, UnitOfWorkFactory
from domain.secret import Secret
from domain.usecases.disconnect import DisconnectCommand
from entrypoints.service.host_webhooks import Dispatcher
from entrypoints.settings import HostWebhookEndpoint
from tests.support.real_core import RealCore
from tests.support.receiver import serving

Pool = psycopg_pool.AsyncConnectionPool[Any]
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
OLD_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
EV = "https://api.calendly.test/scheduled_events/"
INV = "https://api.calendly.test/invitees/"


@dataclass
class Receiver:
    """The host's endpoint: verifies with standardwebhooks, answers `status(n)` to attempt n."""

    url: str = ""
    status: Callable[[int], int] = lambda attempt: 200
    delay: float = 0.0  # before answering each delivery
    gone_for: str | None = None  # 410 to every delivery of this user
    attempts: int = 0
    refused: list[str] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)
    # (webhook-id, payload) of every delivery answered 2xx, in arrival order.
    accepted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.signatures.append(request.headers.get("webhook-signature", ""))
        try:
            payload = Webhook(SECRET).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.refused.append(str(exc))
            return web.Response(status=401)
        self.attempts += 1
        status = 410 if payload["data"]["user_id"] == self.gone_for else self.status(self.attempts)
        await asyncio.sleep(self.delay)
        if 200 <= status < 300:
            self.accepted.append((request.headers["webhook-id"], payload))
        return web.Response(status=status)

    def types(self, user_id: str | None = None) -> list[str]:
        return [p["type"] for _, p in self.accepted if user_id in (None, p["data"]["user_id"])]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    async with serving(found.handle) as url:
        found.url = url
        yield found


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def dispatcher(
    pool: Pool,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    *,
    name: str = "default",
    events: tuple[str, ...] = (),
    **options: Any,
) -> Dispatcher:
    endpoint = HostWebhookEndpoint(
        name=name,
        url=receiver.url,
        secrets=(Secret(SECRET), Secret(OLD_SECRET)),  # both sign: the receiver knows one
        event_types=events,
    )
    return Dispatcher(
        PostgresHostWebhooks(pool),
        HostWebhookSender(http, timeout=5.0),
        [endpoint],
        backoff_base=0.01,
        jitter=lambda: 0.0,
        **options,
    )


async def book(real: RealCore, user: str, n: int, **invitee: Any) -> None:
    """What the webhook handler stores for an `invitee.created` (or later news of it)."""
    uow = cast(UnitOfWorkFactory, real.uow)
    async with uow(user) as tx:
        connection = await tx.connections.get(user)
        assert connection is not None
        status = invitee.pop("status", MeetingStatus.ACTIVE)
        no_show = invitee.pop("no_show", None)
        meeting = Meeting(event_uri=f"{EV}{user}-{n}", name=f"Chat {n}", status=status)
        guest = Invitee(
            invitee_uri=f"{INV}{user}-{n}", event_uri=meeting.event_uri, status=status, **invitee
        )
        change = MeetingChange(
            meeting=meeting,
            invitee=guest,
            no_show=no_show,
            no_show_at=datetime.now(UTC) if no_show is not None else None,
        )
        await tx.meetings.apply(connection, change)
        await tx.commit()


async def until(check: Callable[[], bool], run: Callable[[], Any], seconds: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not delivered in time"
        await run()
        await asyncio.sleep(0.02)


async def test_connect_book_no_show_cancel_disconnect_are_each_delivered_once_in_order(
    real: RealCore, pool: Pool, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sending = dispatcher(pool, http, receiver)
    await sending.prepare()  # a new endpoint starts at the end of the feed
    await real.connect("alice", "alice@example.com")
    await book(real, "alice", 1, email="guest@example.com")
    await book(real, "alice", 1, email="guest@example.com", no_show=True)
    await book(real, "alice", 1, status=MeetingStatus.CANCELED)
    await real.disconnect(DisconnectCommand(user_id="alice"))

    await until(lambda: "connection.disconnected" in receiver.types(), sending.run_once)
    await sending.run_once()  # nothing more, nothing twice
    interesting = [t for t in receiver.types() if t != "connection.updated"]
    assert interesting == [
        "connection.connected",
        "meeting.created",
        "invitee.no_show_set",
        "meeting.canceled",
        "connection.disconnected",
    ]
    ids = [msg_id for msg_id, _ in receiver.accepted]
    assert len(ids) == len(set(ids))
    assert all(i.startswith("msg_") for i in ids)
    sequences = [p["data"]["sequence"] for _, p in receiver.accepted]
    assert sequences == list(range(1, len(sequences) + 1))  # every change of alice's, in order
    assert receiver.refused == []
    assert all(len(s.split(" ")) == 2 for s in receiver.signatures)  # one per secret

    created = next(p for _, p in receiver.accepted if p["type"] == "meeting.created")
    assert created["data"]["user_id"] == "alice"
    assert created["data"]["meeting"]["event_uri"] == f"{EV}alice-1"
    assert created["data"]["meeting"]["invitees"][0]["email"] == "guest@example.com"
    xid, _, change_id = created["data"]["cursor"].partition(".")
    assert xid.isdigit()
    assert change_id.isdigit()
    datetime.fromisoformat(created["timestamp"])
    connected = next(p for _, p in receiver.accepted if p["type"] == "connection.connected")
    assert connected["data"]["connection"]["user_id"] == "alice"
    assert connected["data"]["connection"]["email"] == "alice@example.com"
    [status] = await PostgresHostWebhooks(pool).status()
    assert (status.state, status.backlog, status.fan_lag) == ("ok", 0, 0)
    assert status.last_success_at is not None


async def test_a_receiver_down_for_a_while_gets_everything_once_in_each_users_order(
    real: RealCore, pool: Pool, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    receiver.status = lambda attempt: 503 if attempt <= 12 else 200
    sending = dispatcher(pool, http, receiver, poll_seconds=0.05, concurrency=2)
    await sending.prepare()
    users = ("ann", "ben", "cat")
    for user in users:
        await real.connect(user, f"{user}@example.com")
    stop = asyncio.Event()
    running = asyncio.create_task(sending.run(stop))
    try:
        for n in range(4):
            for user in users:
                await book(real, user, n)
        store = PostgresHostWebhooks(pool)

        async def drained() -> bool:
            [status] = await store.status()
            return status.backlog == 0 and status.fan_lag == 0

        deadline = asyncio.get_running_loop().time() + 30
        while not await drained():
            assert asyncio.get_running_loop().time() < deadline, await store.status()
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await running
    assert receiver.attempts > len(receiver.accepted)  # it was down, and was retried
    ids = [msg_id for msg_id, _ in receiver.accepted]
    assert len(ids) == len(set(ids)), "a change was delivered twice"
    for user in users:
        sequences = [
            p["data"]["sequence"] for _, p in receiver.accepted if p["data"]["user_id"] == user
        ]
        assert sequences == list(range(1, len(sequences) + 1)), (user, sequences)
        assert receiver.types(user).count("meeting.created") == 4


async def test_410_disables_the_endpoint_until_it_is_enabled(
    real: RealCore, pool: Pool, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    receiver.status = lambda attempt: 410
    sending = dispatcher(pool, http, receiver)
    await sending.prepare()
    await real.connect("alice", "alice@example.com")
    await sending.run_once()
    store = PostgresHostWebhooks(pool)
    [status] = await store.status()
    assert status.state == "disabled"
    assert "410" in (status.disabled_reason or "")
    tried = receiver.attempts
    await book(real, "alice", 1)
    await sending.run_once()
    assert receiver.attempts == tried == 1  # nothing is sent to a disabled endpoint
    receiver.status = lambda attempt: 200
    assert await store.enable("default")
    await until(lambda: "meeting.created" in receiver.types(), sending.run_once)
    assert receiver.types()[0] == "connection.connected"  # what 410 refused comes first


async def test_an_endpoint_gets_only_the_events_it_asked_for(
    real: RealCore, pool: Pool, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sending = dispatcher(pool, http, receiver, name="crm", events=("meeting.*",))
    await sending.prepare()
    await real.connect("alice", "alice@example.com")
    await book(real, "alice", 1)
    await book(real, "alice", 2)
    await real.disconnect(DisconnectCommand(user_id="alice"))
    await until(lambda: len(receiver.accepted) >= 2, sending.run_once)
    await sending.run_once()
    assert receiver.types() == ["meeting.created", "meeting.created"]
    [status] = await PostgresHostWebhooks(pool).status()
    assert status.backlog == 0  # the connection events were passed over, not left pending


async def test_a_transaction_that_rolls_back_sends_nothing(
    real: RealCore, pool: Pool, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sending = dispatcher(pool, http, receiver)
    await sending.prepare()
    await real.connect("alice", "alice@example.com")
    uow = cast(UnitOfWorkFactory, real.uow)
    async with uow("alice") as tx:  # written, then left without commit: rolled back
        connection = await tx.connections.get("alice")
        assert connection is not None
        meeting = Meeting(event_uri=f"{EV}rolled-back", name="Never")
        await tx.meetings.apply(connection, MeetingChange(meeting=meeting))
    await book(real, "alice", 2)
    await until(lambda: "meeting.created" in receiver.types(), sending.run_once)
    await sending.run_once()
    uris = [
        p["data"]["meeting"]["event_uri"] for _, p in receiver.accepted if "meeting" in p["data"]
    ]
    assert uris == [f"{EV}alice-2"]


async def test_a_backlog_longer_than_a_page_goes_out_a_page_per_claim_in_order_once(
    real: RealCore, pool: Pool, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sending = dispatcher(pool, http, receiver, page=2)
    await sending.prepare()
    await real.connect("alice", "alice@example.com")
    for n in range(7):
        await book(real, "alice", n)
    await sending.run_once()
    assert len(receiver.accepted) == 2  # one page: the rest is due again at once
    await until(lambda: receiver.types().count("meeting.created") == 7, sending.run_once)
    await sending.run_once()
    sequences = [p["data"]["sequence"] for _, p in receiver.accepted]
    assert sequences == list(range(1, len(sequences) + 1))
    [status] = await PostgresHostWebhooks(pool).status()
    assert status.backlog == 0


async def test_a_slow_endpoint_keeps_the_streams_lease_through_a_long_page(
    real: RealCore, pool: Pool, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    receiver.delay = 0.2  # 5 changes or more: 1 s of sending, longer than the lease
    sending = dispatcher(pool, http, receiver, lease_seconds=0.6)
    await sending.prepare()
    await real.connect("alice", "alice@example.com")
    for n in range(4):
        await book(real, "alice", n)
    await sending.run_once()
    # Settled in one go: nothing left, nobody else could have claimed it meanwhile.
    [status] = await PostgresHostWebhooks(pool).status()
    assert status.backlog == 0
    sent = len(receiver.accepted)
    assert [p["data"]["sequence"] for _, p in receiver.accepted] == list(range(1, sent + 1))
    assert sent >= 5
    await sending.run_once()
    assert len(receiver.accepted) == sent  # nothing twice


async def test_a_stream_stalled_past_its_lease_is_not_sent_twice_by_its_own_dispatcher(
    real: RealCore,
    pool: Pool,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    database_url: str,
) -> None:
    receiver.delay = 0.5
    sending = dispatcher(pool, http, receiver)
    await sending.prepare()
    await real.connect("alice", "alice@example.com")
    await sending._round()  # alice's stream goes out: its first POST takes 0.5 s
    await asyncio.sleep(0.1)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute(  # the lease runs out while that POST is still under way
            "UPDATE host_webhook_streams SET lease_until = now() - interval '1 second'"
        )
    await sending._round()  # claims the stream again: the task already sending it goes on
    await sending.run_once()
    ids = [msg_id for msg_id, _ in receiver.accepted]
    assert ids
    assert len(ids) == len(set(ids)), "a change went twice"
    [status] = await PostgresHostWebhooks(pool).status()
    assert status.backlog == 0


async def test_after_a_410_the_streams_in_flight_stop_before_their_next_message(
    real: RealCore, pool: Pool, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    receiver.delay = 0.2
    receiver.gone_for = "alice"
    sending = dispatcher(pool, http, receiver, concurrency=2)
    await sending.prepare()
    await real.connect("alice", "alice@example.com")
    await real.connect("bob", "bob@example.com")
    for n in range(5):
        await book(real, "bob", n)
    await sending.run_once()  # alice's first message is answered 410; bob's page is under way
    [status] = await PostgresHostWebhooks(pool).status()
    assert status.state == "disabled"
    assert len(receiver.types("bob")) <= 2  # what was in the air, then no more
    assert status.backlog > 0  # the rest waits for `enable`


async def test_a_replay_while_a_page_is_in_flight_is_not_undone_by_that_page(
    real: RealCore, pool: Pool, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    receiver.delay = 0.2
    sending = dispatcher(pool, http, receiver)
    await sending.prepare()
    await real.connect("alice", "alice@example.com")
    await book(real, "alice", 1)
    store = PostgresHostWebhooks(pool)
    await sending._round()  # alice's page goes out, a message every 0.2 s
    await asyncio.sleep(0.1)
    assert await store.replay(datetime(2000, 1, 1, tzinfo=UTC)) == 1
    await sending._round()  # her stream is free to claim again, but this dispatcher is sending it
    await sending.run_once()  # that page ends; its settle finds the lease gone: nothing moves
    for _ in range(20):
        [status] = await store.status()
        if status.backlog == 0:
            break
        await sending.run_once()
    sent = [p["data"]["sequence"] for _, p in receiver.accepted]
    first = max(sent)
    assert sorted(sent) == sorted(list(range(1, first + 1)) * 2), sent  # everything again
