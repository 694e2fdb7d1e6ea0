"""Host webhooks on the real service (issue 13; DR-34): `calendly-connect serve` with
HOST_WEBHOOK_URL pointing at a receiver in this test, the dispatcher running as `host-webhooks run`
runs it (in-process), a user connected through the sandbox, and what the sandbox's Calendly then
does (a booking, a reschedule, a no-show, a cancel) arriving at the receiver, VERIFIED with the
`standardwebhooks` package: each event once, `sequence` 1, 2, 3, ... per user, and the snapshot
what `/api/meetings` shows."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from entrypoints.service.host_webhooks import run_dispatcher
from entrypoints.settings import DispatcherSettings
from tests.support.journeys import connect, meetings, sandbox_user_id
from tests.support.receiver import serving
from tests.support.sandbox import SandboxDriver
from tests.support.service import RunningService, running_service

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Receiver:
    """The host's endpoint: verifies every delivery with standardwebhooks, answers 204."""

    url: str = ""
    refused: list[str] = field(default_factory=list)
    # (webhook-id, payload) of every verified delivery, in arrival order.
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = Webhook(SECRET).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.refused.append(str(exc))
            return web.Response(status=401)
        self.received.append((request.headers["webhook-id"], payload))
        return web.Response(status=204)

    def of(self, user: str) -> list[dict[str, Any]]:
        return [p for _, p in self.received if p["data"]["user_id"] == user]

    async def wait_for(self, user: str, count: int, seconds: float = 20.0) -> list[dict[str, Any]]:
        """`user`'s deliveries once there are `count` of them."""
        deadline = asyncio.get_running_loop().time() + seconds
        while len(self.of(user)) < count:
            assert asyncio.get_running_loop().time() < deadline, self.types(user)
            await asyncio.sleep(0.05)
        return self.of(user)

    def types(self, user: str) -> list[str]:
        return [payload["type"] for payload in self.of(user)]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    async with serving(found.handle) as url:
        found.url = url
        yield found


@pytest.fixture
async def service(
    sandbox: SandboxDriver, database_url: str, receiver: Receiver
) -> AsyncIterator[RunningService]:
    async with running_service(
        database_url, sandbox.url, HOST_WEBHOOK_URL=receiver.url, HOST_WEBHOOK_SECRET=SECRET
    ) as running:
        yield running


@pytest.fixture
async def dispatcher(service: RunningService) -> AsyncIterator[None]:
    """`calendly-connect host-webhooks run`, in this process, with the service's settings."""
    settings = service.settings
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_dispatcher(
            DispatcherSettings(
                database=settings.database,
                host_webhooks=settings.host_webhooks,
                logging=settings.logging,
            ),
            stop,
        )
    )
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


def invitee_id(invitee: dict[str, Any]) -> str:
    return str(invitee["uri"]).rsplit("/", 1)[1]


async def the_meeting(
    http: aiohttp.ClientSession, service: RunningService, user: str, event_uri: str
) -> dict[str, Any]:
    return next(m for m in await meetings(http, service, user) if m["event_uri"] == event_uri)


@pytest.mark.usefixtures("dispatcher")
async def test_a_users_calendar_reaches_the_host_webhook_once_in_order(
    sandbox: SandboxDriver,
    service: RunningService,
    http: aiohttp.ClientSession,
    receiver: Receiver,
) -> None:
    await connect(http, service, "alice", "ada@example.com")
    ada = await sandbox_user_id(sandbox, "ada@example.com")
    # Connected, then its Calendly subscription made (a transaction of its own).
    sent = await receiver.wait_for("alice", 2)
    assert [p["type"] for p in sent] == ["connection.connected", "connection.updated"]
    assert sent[0]["data"]["connection"]["email"] == "ada@example.com"
    assert sent[1]["data"]["connection"]["webhook_status"] == "active"
    # Another user in between: sequences are per user, not positions in the feed.
    await connect(http, service, "bob", "bo@example.com")
    assert [p["type"] for p in await receiver.wait_for("bob", 2)] == [
        "connection.connected",
        "connection.updated",
    ]

    booked = await sandbox.book(ada, wait=True)
    first_uri = booked["event"]["uri"]
    sent = await receiver.wait_for("alice", 3)
    created = sent[2]
    assert created["type"] == "meeting.created"
    assert created["data"]["meeting"] == await the_meeting(http, service, "alice", first_uri)

    moved = await sandbox.control(
        "POST",
        f"/_sandbox/invitees/{invitee_id(booked['invitees'][0])}/reschedule",
        {"start_time": "2030-03-06T09:00:00.000000Z", "wait": True},
        expect=201,
    )
    second_uri = moved["event"]["uri"]
    assert second_uri != first_uri
    # Calendly cancels the old invitee, then creates the new one (the sandbox's default order):
    # the old meeting is `meeting.rescheduled` (it says more than canceled), then the new one
    # is `meeting.created`, each a change of its own.
    sent = await receiver.wait_for("alice", 5)
    assert [p["type"] for p in sent[3:5]] == ["meeting.rescheduled", "meeting.created"]
    old, new = sent[3]["data"]["meeting"], sent[4]["data"]["meeting"]
    assert old["event_uri"] == first_uri
    assert old == await the_meeting(http, service, "alice", first_uri)
    assert old["status"] == "canceled"
    assert new["event_uri"] == second_uri
    assert new == await the_meeting(http, service, "alice", second_uri)

    new_invitee = invitee_id(moved["new_invitee"])
    await sandbox.control(
        "POST", f"/_sandbox/invitees/{new_invitee}/no_show", {"wait": True}, expect=201
    )
    sent = await receiver.wait_for("alice", 6)
    assert sent[5]["type"] == "invitee.no_show_set"
    no_show = sent[5]["data"]["meeting"]
    assert no_show == await the_meeting(http, service, "alice", second_uri)
    assert no_show["invitees"][0]["no_show"] is True

    await sandbox.control(
        "POST", f"/_sandbox/invitees/{new_invitee}/cancel", {"wait": True}, expect=201
    )
    sent = await receiver.wait_for("alice", 7)
    assert sent[6]["type"] == "meeting.canceled"
    canceled = sent[6]["data"]["meeting"]
    assert canceled == await the_meeting(http, service, "alice", second_uri)
    assert canceled["status"] == "canceled"

    # Nothing more comes, nothing came twice, every delivery verified, each user in order.
    await asyncio.sleep(1.5)
    assert receiver.refused == []
    assert len(receiver.received) == 9, [p["type"] for _, p in receiver.received]
    assert len({webhook_id for webhook_id, _ in receiver.received}) == 9
    assert [p["data"]["sequence"] for p in receiver.of("alice")] == [1, 2, 3, 4, 5, 6, 7]
    assert [p["data"]["sequence"] for p in receiver.of("bob")] == [1, 2]
    assert receiver.types("alice") == [
        "connection.connected",
        "connection.updated",
        "meeting.created",
        "meeting.rescheduled",
        "meeting.created",
        "invitee.no_show_set",
        "meeting.canceled",
    ]
