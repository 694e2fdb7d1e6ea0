"""Row 12: Postgres goes down during a delivery. The answer is a fast 503 (Calendly retries),
nothing is half-written, and the retry after Postgres is back takes effect exactly once.

The service runs for real (container, pool, uvicorn) against a Postgres of this module's own,
which the tests stop with `pg_ctl stop -m immediate` and start again.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import psycopg
import pytest

from tests.faults.conftest import (
    StoppablePostgres,
    booking,
    deliver,
    effects,
    eventually,
)
from tests.support.journeys import connect
from tests.support.sandbox import SandboxDriver
from tests.support.service import RunningService, running_service

# "Fast": well inside Calendly's 15 s read timeout. Generous on purpose; no tight timing.
FAST = 10.0


async def ready(http: aiohttp.ClientSession, service: RunningService) -> bool:
    async with http.get(f"{service.url}/health/ready") as response:
        return response.status == 200


async def connected_host(http: aiohttp.ClientSession, service: RunningService) -> str:
    connection = (await connect(http, service, "alice", "ada@example.com")).connection
    assert connection["status"] == "active"
    host: str = connection["calendly_user_uri"]
    return host


@pytest.mark.parametrize("pool_min_size", ["1", "3"])
async def test_a_delivery_while_postgres_is_down_is_a_fast_503_and_its_retry_applies_once(
    own_postgres: StoppablePostgres,
    own_database_url: str,
    sandbox: SandboxDriver,
    http: aiohttp.ClientSession,
    pool_min_size: str,
) -> None:
    async with running_service(
        own_database_url, sandbox.url, DB_POOL_MIN_SIZE=pool_min_size
    ) as service:
        host = await connected_host(http, service)
        body = booking(host)

        await asyncio.to_thread(own_postgres.stop_immediately)
        down = await deliver(http, service.url, body, service.signing_key)
        assert down.status == 503, down.body
        assert down.seconds < FAST, f"503 after {down.seconds:.1f} s"
        assert down.headers.get("Content-Type", "").startswith("application/problem+json")
        assert "Retry-After" in down.headers

        # Calendly keeps retrying while the database is down: each one a fast 503 as well.
        again = await deliver(http, service.url, body, service.signing_key)
        assert again.status == 503, again.body
        assert again.seconds < FAST, f"503 after {again.seconds:.1f} s"

        await asyncio.to_thread(own_postgres.start)
        assert await effects(own_database_url) == (0, 0, 0)  # nothing half-written

        # Calendly's next retry, once the database is back: applied, exactly once.
        retried = await deliver(http, service.url, body, service.signing_key)
        assert retried.status == 200, retried.body
        assert retried.body == {"outcome": "applied"}
        assert await effects(own_database_url) == (1, 1, 1)

        third = await deliver(http, service.url, body, service.signing_key)
        assert third.status == 200, third.body
        assert third.body == {"outcome": "duplicate"}
        assert await effects(own_database_url) == (1, 1, 1)
        await eventually(lambda: ready(http, service), within=FAST, what="readiness")


async def test_a_forgery_while_postgres_is_down_is_refused_at_once_without_it(
    own_postgres: StoppablePostgres,
    own_database_url: str,
    sandbox: SandboxDriver,
    http: aiohttp.ClientSession,
) -> None:
    """On the shared URL the app's key decides: 401 with no wait for the database (not 503)."""
    async with running_service(own_database_url, sandbox.url) as service:
        host = await connected_host(http, service)
        await asyncio.to_thread(own_postgres.stop_immediately)
        forged = await deliver(http, service.url, booking(host), "not-the-signing-key")
        assert forged.status == 401, forged.body  # it used to wait 5 s for the pool: 503
        await asyncio.to_thread(own_postgres.start)


async def test_postgres_dying_mid_transaction_leaves_nothing_and_the_retry_applies_once(
    own_postgres: StoppablePostgres,
    own_database_url: str,
    sandbox: SandboxDriver,
    http: aiohttp.ClientSession,
) -> None:
    """The delivery's transaction has written its event row and waits on `meetings` when
    Postgres dies: the row must not survive, and the retry must not be taken for a duplicate."""
    async with running_service(own_database_url, sandbox.url) as service:
        host = await connected_host(http, service)
        body = booking(host, event_id="e-mid", invitee_id="i-mid")

        blocker = await psycopg.AsyncConnection.connect(own_database_url)
        try:
            # Hold `meetings` so the delivery's transaction stops right after recording the event.
            await blocker.execute("LOCK TABLE meetings IN ACCESS EXCLUSIVE MODE")
            delivery = asyncio.create_task(deliver(http, service.url, body, service.signing_key))
            await eventually(
                lambda: waiting_on_a_lock(own_database_url),
                within=FAST,
                what="the delivery to wait on the meetings lock",
            )
            stopped_at = time.monotonic()
            await asyncio.to_thread(own_postgres.stop_immediately)
            answer = await asyncio.wait_for(delivery, FAST)
        finally:
            await blocker.close()
        assert answer.status == 503, answer.body
        assert time.monotonic() - stopped_at < FAST

        await asyncio.to_thread(own_postgres.start)
        assert await effects(own_database_url) == (0, 0, 0)

        retried = await deliver(http, service.url, body, service.signing_key)
        assert retried.status == 200, retried.body
        assert retried.body == {"outcome": "applied"}
        assert await effects(own_database_url) == (1, 1, 1)
        third = await deliver(http, service.url, body, service.signing_key)
        assert third.body == {"outcome": "duplicate"}
        assert await effects(own_database_url) == (1, 1, 1)


async def waiting_on_a_lock(database_url: str) -> bool:
    """Whether some backend of the service waits on a heavyweight lock (the blocked insert)."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        row = await cursor.fetchone()
    return row is not None and row[0] > 0


# Longer than psycopg_pool's reconnection back-off reaches in its first attempts (about 1, 3, 7
# and 15 s after the first failure): the next one would come some 30 s in.
LONG_OUTAGE = 18.0
# Once Postgres is back, the first retry is answered 200 within this.
RECOVERY = 5.0


@pytest.mark.slow
async def test_after_a_long_outage_the_first_retry_once_postgres_is_back_succeeds(
    own_postgres: StoppablePostgres,
    own_database_url: str,
    sandbox: SandboxDriver,
    http: aiohttp.ClientSession,
) -> None:
    async with running_service(own_database_url, sandbox.url) as service:
        host = await connected_host(http, service)
        body = booking(host, event_id="e-long", invitee_id="i-long")

        await asyncio.to_thread(own_postgres.stop_immediately)
        outage_started = time.monotonic()
        answers = 0
        while time.monotonic() - outage_started < LONG_OUTAGE:
            # Calendly retrying all along: every attempt a 503, none of them slow.
            down = await deliver(http, service.url, body, service.signing_key)
            assert down.status == 503, down.body
            assert down.seconds < FAST, f"503 after {down.seconds:.1f} s"
            answers += 1
            await asyncio.sleep(0.5)
        assert answers >= 3

        await asyncio.to_thread(own_postgres.start)
        retried = await deliver(http, service.url, body, service.signing_key)
        assert retried.status == 200, f"{retried.body} after {retried.seconds:.1f} s"
        assert retried.seconds < RECOVERY
        assert retried.body == {"outcome": "applied"}
        assert await effects(own_database_url) == (1, 1, 1)


# Longer than one run of the pool's reconnection attempts (5 s).
LATE_START = 7.0


@pytest.mark.slow
async def test_a_service_started_while_postgres_is_down_serves_once_postgres_is_up(
    own_postgres: StoppablePostgres,
    own_database_url: str,
    sandbox: SandboxDriver,
    http: aiohttp.ClientSession,
) -> None:
    await asyncio.to_thread(own_postgres.stop_immediately)

    async def start_postgres_late() -> float:
        await asyncio.sleep(LATE_START)
        await asyncio.to_thread(own_postgres.start)
        return time.monotonic()

    late = asyncio.create_task(start_postgres_late())
    try:
        async with running_service(own_database_url, sandbox.url) as service:
            assert late.done()
            assert time.monotonic() - late.result() < FAST  # it noticed promptly
            host = await connected_host(http, service)
            applied = await deliver(http, service.url, booking(host), service.signing_key)
            assert applied.status == 200, applied.body
            assert await effects(own_database_url) == (1, 1, 1)
    finally:
        await late
