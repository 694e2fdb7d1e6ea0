"""A bounded attack over real HTTP: forged large deliveries in flight while real work goes on.

RELIABILITY row 29. Before the fix, each forged delivery naming 45,000 hosts held a pooled
connection for seconds (one routing query per host, before the signature was checked), so a
dozen in flight made health checks and correctly signed deliveries answer 503. Now a forgery
costs the database nothing on the shared URL and one indexed lookup on a connection's own URL.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.support import journeys
from tests.support.deliveries import envelope, invitee_payload, sign
from tests.support.sandbox import SandboxDriver
from tests.support.service import RunningService, running_service

FORGERS = 12  # requests in flight at once
FORGED_EACH = 4  # sent by each, one after the other
SIGNED = 20
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def service(sandbox: SandboxDriver, database_url: str) -> AsyncIterator[RunningService]:
    # A small pool makes starvation show at once: 4 connections for everything.
    async with running_service(database_url, sandbox.url, DB_POOL_MAX_SIZE="4") as running:
        yield running


def owner_rows(service: RunningService, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(service.settings.database.url.reveal()) as conn:
        return conn.execute(query.encode()).fetchall()


def forged_body(host: str) -> bytes:
    """About 800 KB: a booking whose event names 45,000 hosts, the real one last."""
    payload = invitee_payload(host_uri=host, event_id="forged", invitee_id="forged")
    hosts = [{"user": f"u{i}"} for i in range(45_000)]
    payload["scheduled_event"]["event_memberships"] = [*hosts, {"user": host}]
    forged = {"event": "invitee.created", "created_by": hosts[0]["user"], "payload": payload}
    return json.dumps(forged, separators=(",", ":")).encode()


async def test_forged_deliveries_never_starve_health_or_signed_deliveries(
    sandbox: SandboxDriver, service: RunningService, http: aiohttp.ClientSession
) -> None:
    connected = await journeys.connect(http, service, "alice", "ada@example.com")
    host = connected.connection["calendly_user_uri"]
    ((token,),) = owner_rows(service, "SELECT webhook_token FROM calendly_webhook_routes")
    forged = forged_body(host)
    assert 750_000 < len(forged) < 1024 * 1024  # under the body limit
    urls = [f"{service.url}/webhooks/calendly", f"{service.url}/webhooks/calendly/{token}"]
    forged_statuses: list[int] = []
    signed_statuses: list[int] = []
    health_statuses: list[int] = []
    attacking = asyncio.Event()

    async def forger(n: int) -> None:
        for i in range(FORGED_EACH):
            headers = {**JSON, "Calendly-Webhook-Signature": f"t={int(time.time())},v1={'0' * 64}"}
            async with http.post(urls[(n + i) % 2], data=forged, headers=headers) as response:
                forged_statuses.append(response.status)
            attacking.set()

    async def signed(n: int) -> None:
        await attacking.wait()
        payload = invitee_payload(host_uri=host, event_id=f"e{n}", invitee_id="i1")
        body = envelope("invitee.created", payload, host)
        headers = {**JSON, "Calendly-Webhook-Signature": sign(body, service.signing_key)}
        async with http.post(urls[n % 2], data=body, headers=headers) as response:
            signed_statuses.append(response.status)

    async def health() -> None:
        await attacking.wait()
        while len(forged_statuses) < FORGERS * FORGED_EACH:
            async with http.get(f"{service.url}/health/ready") as response:
                health_statuses.append(response.status)
            await asyncio.sleep(0.05)

    await asyncio.wait_for(
        asyncio.gather(
            *(forger(n) for n in range(FORGERS)),
            *(signed(n) for n in range(SIGNED)),
            health(),
        ),
        timeout=120,
    )
    assert forged_statuses == [401] * (FORGERS * FORGED_EACH)
    assert signed_statuses == [200] * SIGNED
    assert health_statuses
    assert set(health_statuses) == {200}
    # Every signed booking is stored, and nothing forged left a row.
    assert owner_rows(service, "SELECT count(*) FROM meetings") == [(SIGNED,)]
    assert owner_rows(
        service, "SELECT count(*) FROM calendly_webhook_events WHERE payload::text LIKE '%forged%'"
    ) == [(0,)]
