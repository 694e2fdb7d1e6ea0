"""`GET /v1/changes` on the real service: what users do (connect, book, cancel, reschedule,
disconnect) comes out of the feed, each change once, in order, with its snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from adapters.postgres.api_keys import PostgresApiKeyStore
from adapters.postgres.pool import make_pool
from adapters.system import SecretsRandomness, SystemClock
from domain.api_keys import ApiKeyScope
from domain.usecases.api_keys import CreateApiKey
from tests.support.journeys import call, connect, sandbox_user_id
from tests.support.postgres import RUNTIME_ROLE
from tests.support.sandbox import SandboxDriver
from tests.support.service import RunningService, running_service


@pytest.fixture
async def service(sandbox: SandboxDriver, database_url: str) -> AsyncIterator[RunningService]:
    async with running_service(database_url, sandbox.url) as running:
        yield running


async def new_key(database_url: str) -> str:
    pool = make_pool(database_url, runtime_role=RUNTIME_ROLE, min_size=1, max_size=1)
    await pool.open(wait=True)
    try:
        create = CreateApiKey(PostgresApiKeyStore(pool), SystemClock(), SecretsRandomness())
        created = await create("the host's back end", ApiKeyScope.READ)
        return created.secret.reveal()
    finally:
        await pool.close()


async def read_all(
    http: aiohttp.ClientSession,
    service: RunningService,
    key: str,
    after: str | None,
    *,
    expect: int,
) -> tuple[list[dict[str, Any]], str]:
    """Page through the feed from `after` with small pages, as a mirroring back end does, until
    `expect` changes came (a transaction open elsewhere, the worker's, may delay the last ones:
    the feed waits for it, it never skips) or 10 s passed."""
    found: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        params = {"limit": "2", **({"after": after} if after else {})}
        async with http.get(
            f"{service.url}/v1/changes",
            params=params,
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            assert response.status == 200, await response.text()
            page = await response.json()
        found += page["changes"]
        after = page["next_cursor"]
        if not page["changes"]:
            if len(found) >= expect or asyncio.get_running_loop().time() > deadline:
                return found, after
            await asyncio.sleep(0.1)


async def test_what_users_do_comes_out_of_the_feed_once_in_order(
    sandbox: SandboxDriver, service: RunningService, http: aiohttp.ClientSession, database_url: str
) -> None:
    key = await new_key(database_url)
    await connect(http, service, "alice", "ada@example.com")
    ada = await sandbox_user_id(sandbox, "ada@example.com")
    booked = await sandbox.book(ada, wait=True)

    first, cursor = await read_all(http, service, key, None, expect=3)
    # Connected, then its webhook subscription made (a transaction of its own), then booked.
    assert [(c["user_id"], c["kind"], c["event"]) for c in first] == [
        ("alice", "connection", "connection.connected"),
        ("alice", "connection", "connection.updated"),
        ("alice", "meeting", "meeting.created"),
    ]
    assert [c["user_seq"] for c in first] == [1, 2, 3]
    assert first[1]["connection"]["webhook_status"] == "active"
    meeting = first[2]["meeting"]
    assert meeting["event_uri"] == booked["event"]["uri"]
    assert meeting["invitees"][0]["email"] == "grace@example.org"
    assert first[0]["connection"]["email"] == "ada@example.com"

    # The invitee cancels; then alice disconnects. Only what is new comes after the cursor.
    invitee_id = booked["invitees"][0]["uri"].rsplit("/", 1)[1]
    await sandbox.control(
        "POST", f"/_sandbox/invitees/{invitee_id}/cancel", {"wait": True}, expect=201
    )
    status, body = await call(http, service, "DELETE", "/api/calendly/connection", "alice")
    assert status == 200, body

    later, _ = await read_all(http, service, key, cursor, expect=2)
    assert [(c["kind"], c["event"]) for c in later] == [
        ("meeting", "meeting.canceled"),
        ("connection", "connection.disconnected"),
    ]
    assert [c["user_seq"] for c in later] == [4, 5]
    assert later[0]["meeting"]["status"] == "canceled"
    assert later[1]["connection"]["status"] == "disconnected"
    # From the start again: everything, each once.
    everything, _ = await read_all(http, service, key, None, expect=5)
    assert [c["cursor"] for c in everything] == [c["cursor"] for c in first + later]
