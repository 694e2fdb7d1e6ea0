"""Live streams on the real service: they end with their token, and their ids are the user's own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import jwt
import pytest

from tests.support.journeys import connect, sandbox_user_id
from tests.support.sandbox import SandboxDriver
from tests.support.service import RunningService, running_service
from tests.support.sse import Event, EventReader


@pytest.fixture
async def service(sandbox: SandboxDriver, database_url: str) -> AsyncIterator[RunningService]:
    async with running_service(database_url, sandbox.url) as running:
        yield running


async def read_to_the_end(events: EventReader) -> tuple[list[Event], float]:
    """Every event until the server ends the stream, and when (time.time()) it ended."""
    seen: list[Event] = []
    while True:
        try:
            seen.append(await events.next(seconds=60))
        except EOFError:
            return seen, time.time()


async def test_a_stream_ends_when_its_token_expires_and_sends_nothing_written_after(
    sandbox: SandboxDriver, service: RunningService, http: aiohttp.ClientSession
) -> None:
    await connect(http, service, "alice", "ada@example.com")
    ada = await sandbox_user_id(sandbox, "ada@example.com")
    # Long enough for the booking below on a slow machine; `exp` is whole seconds.
    token = service.token_for("alice", ttl=10)
    expires_at = jwt.decode(token, options={"verify_signature": False})["exp"]
    headers = {"Authorization": f"Bearer {token}"}

    async with http.get(f"{service.url}/api/live", headers=headers) as stream:
        assert stream.status == 200
        events = EventReader(stream)
        assert (await events.next()).event == "ready"
        assert (await events.next()).event == "connection"
        before = await sandbox.book(ada, start_time="2030-03-01T10:00:00Z", wait=True)
        update = await events.until("meetings")
        assert [m["event_uri"] for m in update.json()["meetings"]] == [before["event"]["uri"]]
        reader = asyncio.create_task(read_to_the_end(events))

        await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.5)
        after = await sandbox.book(ada, start_time="2030-03-02T10:00:00Z", wait=True)
        rest, ended_at = await asyncio.wait_for(reader, 10)

    assert ended_at < expires_at + 5, "the stream outlived its token"
    assert [e.event for e in rest] == ["expired"]
    assert all(after["event"]["uri"] not in e.data for e in rest)

    # The page reconnects with a fresh token from where it was: it misses nothing.
    fresh = {**service.auth("alice"), "Last-Event-ID": update.id or ""}
    async with http.get(f"{service.url}/api/live", headers=fresh) as stream:
        events = EventReader(stream)
        assert (await events.next()).event == "ready"
        update = await events.until("meetings")
        assert [m["event_uri"] for m in update.json()["meetings"]] == [after["event"]["uri"]]


async def test_a_streams_ids_count_its_own_users_changes_only(
    sandbox: SandboxDriver, service: RunningService, http: aiohttp.ClientSession
) -> None:
    await connect(http, service, "alice", "ada@example.com")
    await connect(http, service, "bob", "bo@example.com")
    hosts = {
        "alice": await sandbox_user_id(sandbox, "ada@example.com"),
        "bob": await sandbox_user_id(sandbox, "bo@example.com"),
    }
    ids: dict[str, list[str | None]] = {"alice": [], "bob": []}
    async with (
        http.get(f"{service.url}/api/live", headers=service.auth("alice")) as alice_stream,
        http.get(f"{service.url}/api/live", headers=service.auth("bob")) as bob_stream,
    ):
        streams = {"alice": EventReader(alice_stream), "bob": EventReader(bob_stream)}
        for events in streams.values():
            assert (await events.next()).json() == {"cursor": 0, "heartbeat": 30}
        # Interleaved: each user's booking, then the other's, and twice in a row for alice.
        for n, user in enumerate(["alice", "bob", "alice", "alice", "bob", "alice", "bob"]):
            await sandbox.book(hosts[user], start_time=f"2030-03-0{n + 1}T10:00:00Z", wait=True)
            update = await streams[user].until("meetings")
            ids[user].append(update.id)

    assert ids == {"alice": ["1", "2", "3", "4"], "bob": ["1", "2", "3"]}
