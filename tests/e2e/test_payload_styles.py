"""The meetings a user sees do not depend on the shape of Calendly's deliveries (issue 16).

Over real HTTP: the service and its worker, the sandbox delivering signed webhooks to it and
answering the worker's reads. Two hosts live the same story, one receiving today's deliveries
(the event embedded), the other the pre-2022 shape (the event's URI only, a boolean
`canceled`): booking, a cancel, a reschedule in each order, a group event one of two invitees
leaves, a no-show marked, and one marked then unmarked. Once the worker has read what the old
shape lacked, both see the same meetings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from entrypoints.container import Container, resolve
from entrypoints.service.worker import build_worker
from tests.support import journeys
from tests.support.sandbox import SandboxDriver
from tests.support.service import RunningService, running_service
from tests.support.sse import EventReader


@pytest.fixture
async def service(sandbox: SandboxDriver, database_url: str) -> AsyncIterator[RunningService]:
    async with running_service(
        database_url, sandbox.url, WORKER_POLL_MILLISECONDS="100"
    ) as running:
        container = Container(settings=running.settings)
        worker = await build_worker(container, running.settings)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            yield running
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            await resolve(container.shutdown_resources())


def _id(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[1]


async def live_the_story(sandbox: SandboxDriver, host: str) -> None:
    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = await sandbox.control(
            "POST", path, {**body, "wait": True}, expect=201
        )
        return answer

    async def book(at: str, *invitees: str, limit: int = 1) -> dict[str, Any]:
        return await sandbox.book(
            host,
            start_time=at,
            event_name="Intro · Café",
            location_type="physical",
            invitee_limit=limit,
            invitees=[
                {"name": n, "email": f"{n.split()[0].lower()}@example.org"} for n in invitees
            ],
            wait=True,
        )

    canceled = await book("2030-03-01T09:00:00Z", "Grace Hopper")
    await post(f"/_sandbox/invitees/{_id(canceled['invitees'][0]['uri'])}/cancel", {})
    for n, order in enumerate(("canceled_first", "created_first")):
        moved = await book(f"2030-03-0{2 + n}T09:00:00Z", f"Zoë Ångström{n}")
        await post(
            f"/_sandbox/invitees/{_id(moved['invitees'][0]['uri'])}/reschedule",
            {"start_time": f"2030-03-1{2 + n}T09:00:00Z", "order": order},
        )
    group = await book("2030-03-05T09:00:00Z", "Ada Lovelace", "李雷 Li", limit=2)
    await post(
        f"/_sandbox/invitees/{_id(group['invitees'][1]['uri'])}/cancel",
        {"canceler_type": "host", "reason": "ça dépend"},
    )
    absent = await book("2030-03-06T09:00:00Z", "Мария Ivanova")
    await post(f"/_sandbox/invitees/{_id(absent['invitees'][0]['uri'])}/no_show", {})
    back = await book("2030-03-07T09:00:00Z", "Olu O'Brien")
    back_id = _id(back["invitees"][0]["uri"])
    await post(f"/_sandbox/invitees/{back_id}/no_show", {})
    await sandbox.control("DELETE", f"/_sandbox/invitees/{back_id}/no_show", {"wait": True})


def what_is_seen(meetings: list[dict[str, Any]]) -> list[Any]:
    """Each meeting as the page shows it, without the URIs (each host's are its own)."""

    def cancellation(c: dict[str, Any] | None) -> Any:
        return None if c is None else (c["canceled_by"], c["reason"], c["canceler_type"])

    return sorted(
        (
            m["name"],
            m["start_time"],
            m["end_time"],
            m["status"],
            m["location"],
            cancellation(m["cancellation"]),
            m["details"],
            sorted(
                (
                    i["name"],
                    i["email"],
                    i["status"],
                    i["rescheduled"],
                    i["old_invitee_uri"] is not None,
                    i["new_invitee_uri"] is not None,
                    i["no_show"],
                    cancellation(i["cancellation"]),
                )
                for i in m["invitees"]
            ),
        )
        for m in meetings
    )


async def settled(
    http: aiohttp.ClientSession, service: RunningService, user: str
) -> list[dict[str, Any]]:
    """The user's meetings once none waits for its details (the worker reads them)."""
    deadline = time.monotonic() + 30
    while True:
        found = await journeys.meetings(http, service, user)
        if found and all(m["details"] == "complete" for m in found):
            return found
        assert time.monotonic() < deadline, f"details still pending: {found}"
        await asyncio.sleep(0.1)


async def test_every_payload_style_ends_in_the_same_meetings(
    sandbox: SandboxDriver, service: RunningService, http: aiohttp.ClientSession
) -> None:
    seen: dict[str, list[Any]] = {}
    for style, email in (("current", "now@example.com"), ("legacy", "then@example.com")):
        # Two hosts of one name: a host's cancel names the host.
        host = (await sandbox.create_user("Ada Host", email))["id"]
        await sandbox.control(
            "PATCH", f"/_sandbox/users/{host}", {"payload_style": style}, expect=200
        )
        await journeys.connect(http, service, style, email)
        await sandbox.control("DELETE", "/_sandbox/calls", expect=204)
        await live_the_story(sandbox, host)
        # Once no meeting waits for its details (the worker reads them as it comes to them,
        # maybe after the story's last step).
        seen[style] = what_is_seen(await settled(http, service, style))
        reads = await sandbox.calls("GET /scheduled_events/{uuid}")
        if style == "legacy":  # what the deliveries lacked was read from Calendly
            assert reads, "the worker never read an event"
        else:  # everything was in the deliveries: no event is read
            assert reads == []
    assert seen["legacy"] == seen["current"]
    statuses = [meeting[3] for meeting in seen["current"]]
    # The canceled booking and the two rescheduled-from events; the group stays active.
    assert statuses.count("canceled") == 3
    assert len(statuses) == 8
    group = next(m for m in seen["current"] if len(m[7]) == 2)
    assert group[3] == "active"
    marked = {i[0]: i[6] for m in seen["current"] for i in m[7]}
    assert (marked["Мария Ivanova"], marked["Olu O'Brien"]) == (True, False)


async def test_a_revoked_grant_shows_on_the_open_page_at_the_next_call(
    sandbox: SandboxDriver, service: RunningService, http: aiohttp.ClientSession
) -> None:
    # The page is open (its grant check, DR-43, has run and found the grant alive); then the
    # user removes the app in Calendly. The next call to Calendly (here the read of an event a
    # legacy delivery named) gets a 401, the refresh an invalid_grant: the page hears
    # `needs_reauth` within seconds, and the worker stops calling for that connection.
    host = (await sandbox.create_user("Ada Host", "gone@example.com"))["id"]
    await sandbox.control(
        "PATCH", f"/_sandbox/users/{host}", {"payload_style": "legacy"}, expect=200
    )
    await journeys.connect(http, service, "gone", "gone@example.com")
    async with http.get(f"{service.url}/api/live", headers=service.auth("gone")) as stream:
        events = EventReader(stream)
        assert (await events.next()).event == "ready"
        assert (await events.next()).event == "connection"
        await asyncio.sleep(1.0)  # the page-open check, at the worker's next claim
        await sandbox.control("POST", f"/_sandbox/users/{host}/revoke_app", {}, expect=200)
        await sandbox.control("DELETE", "/_sandbox/calls", expect=204)
        await sandbox.book(host, start_time="2030-04-01T09:00:00Z", wait=True)
        started = time.monotonic()
        while True:
            change = await events.until("connection", seconds=15)
            if change.json()["connection"]["status"] == "needs_reauth":
                break
        assert time.monotonic() - started < 10
    reads = await sandbox.calls("GET /scheduled_events/{uuid}")
    assert reads, "the call that found the grant gone was the event's read"
    await asyncio.sleep(1.0)
    calls_after = len(await sandbox.calls())
    await asyncio.sleep(1.5)
    assert len(await sandbox.calls()) == calls_after  # nothing more spent on it
