"""The maintenance worker on real Postgres and the sandbox: repair, polling, limits, leases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from structlog.testing import capture_logs

from adapters.postgres.webhook_health import PostgresWebhookHealth
from domain.errors import StorageUnavailable
from domain.model import WebhookStatus
from entrypoints.container import Container, resolve
from entrypoints.service.worker import Worker, build_worker
from tests.integration.conftest import Pool
from tests.support.real_core import (
    RealCore,
    connect_free,
    owner_sql,
    settings_for,
    subscriptions,
    user_id_of,
)


def meetings_in_db(core: RealCore) -> list[tuple[object, ...]]:
    return owner_sql(core, "SELECT event_uri, status FROM meetings ORDER BY event_uri")


def due_now(core: RealCore, *columns: str) -> None:
    sets = ", ".join(f"{c} = now() - interval '1 second'" for c in columns)
    owner_sql(core, f"UPDATE connection_maintenance SET {sets}")  # noqa: S608 - test constants


async def test_a_subscription_disabled_by_failed_deliveries_is_repaired_and_backfilled(
    real: RealCore, workers: tuple[Worker, Worker]
) -> None:
    await real.connect("alice", "ada@example.com")
    worker, _ = workers
    await worker.run_once()  # the first pass: nothing to repair, nothing booked yet
    ada = await user_id_of(real, "ada@example.com")
    # The callback base is a closed port: every delivery fails, and after the (compressed)
    # 24 hours of retries Calendly disables the subscription, telling nobody.
    booked = await real.sandbox.book(ada, wait=True)
    (old,) = await subscriptions(real)

    async def disabled() -> bool:
        return (await subscriptions(real))[0]["state"] == "disabled"

    for _ in range(100):
        if await disabled():
            break
        await asyncio.sleep(0.05)
    assert await disabled()
    assert meetings_in_db(real) == []  # the booking was missed

    due_now(real, "subscription_due")
    assert await worker.run_once() == 1
    subs = await subscriptions(real)
    assert [s["state"] for s in subs] == ["active"]
    assert subs[0]["uri"] != old["uri"]
    assert meetings_in_db(real) == [(booked["event"]["uri"], "active")]
    assert owner_sql(real, "SELECT webhook_status FROM calendar_connections") == [("active",)]


async def test_after_our_own_outage_a_disabled_subscription_is_found_without_being_asked(
    real: RealCore, pool: Pool
) -> None:
    # As above, but nobody forces the check: the webhook endpoint's own record shows the
    # outage (no beat while Calendly failed to reach us), and the worker's sweep that follows
    # it makes the check and the reconciliation due (DR-45). Settle and spread are zero here:
    # the defaults (60 s, 5 min) are measured by `make bench`.
    await real.connect("alice", "ada@example.com")
    settings = settings_for(real)
    container = Container(settings=settings)
    health = PostgresWebhookHealth(pool, settle=timedelta(0), spread=timedelta(0))
    try:
        worker = Worker(
            queue=await resolve(container.maintenance_queue()),
            maintain=await resolve(container.maintain_connection()),
            settings=settings,
            webhook_health=health,
        )
        await worker.run_once()  # the first pass: the subscription works, checked for a week
        assert await worker.run_once() == 0
        down = datetime.now(tz=UTC) - timedelta(minutes=5)
        await health.beat(now=down)  # the endpoint's last beat before it went away
        ada = await user_id_of(real, "ada@example.com")
        booked = await real.sandbox.book(ada, wait=True)
        for _ in range(100):
            if (await subscriptions(real))[0]["state"] == "disabled":
                break
            await asyncio.sleep(0.05)
        assert (await subscriptions(real))[0]["state"] == "disabled"
        assert await worker.run_once() == 0  # nothing is due yet: nobody knows
        await health.beat()  # back: the gap is an outage
        assert await worker.sweep_outages() == 1
        assert await worker.run_once() == 1
        assert [s["state"] for s in await subscriptions(real)] == ["active"]
        assert meetings_in_db(real) == [(booked["event"]["uri"], "active")]
    finally:
        await resolve(container.shutdown_resources())


async def test_a_grant_revoked_while_nobody_looks_shows_within_a_day(
    real: RealCore, workers: tuple[Worker, Worker]
) -> None:
    # Issue 15's promise on the sandbox's clock: the app removed in Calendly, nobody opens the
    # page. Every pass schedules the next grant check within a day; when it comes (the
    # sandbox's clock moved on, so the token has expired), its one call finds the grant gone.
    await real.connect("paula", "paula@example.com")
    worker, _ = workers
    while await worker.run_once():  # whatever the connect left due
        pass
    ((grant_due, subscription_due, sync_due),) = owner_sql(
        real, "SELECT grant_due, subscription_due, sync_due FROM connection_maintenance"
    )
    now = datetime.now(tz=UTC)
    assert isinstance(grant_due, datetime)
    assert isinstance(subscription_due, datetime)
    assert isinstance(sync_due, datetime)
    assert now + timedelta(hours=21) <= grant_due <= now + timedelta(days=1)
    assert subscription_due > now + timedelta(days=6)  # the other kinds: a week away
    assert sync_due > now + timedelta(days=6)
    paula = await user_id_of(real, "paula@example.com")
    await real.sandbox.control("POST", f"/_sandbox/users/{paula}/revoke_app", expect=200)
    await real.sandbox.control("POST", "/_sandbox/clock/advance", {"seconds": 86_400}, expect=200)
    assert await worker.run_once() == 0  # nothing due yet here: unnoticed
    await real.sandbox.control("DELETE", "/_sandbox/calls", expect=204)
    due_now(real, "grant_due")  # a day has passed here too
    assert await worker.run_once() == 1
    # Our clock did not move, so the token looks live here: the check reads /users/me, which
    # Calendly refuses; the refresh that follows is refused too: the grant is gone.
    routes = [c["route"] for c in await real.sandbox.calls()]
    assert routes == ["GET /users/me", "POST /oauth/token"]
    assert owner_sql(real, "SELECT status FROM calendar_connections") == [("needs_reauth",)]


async def test_free_plan_bookings_arrive_by_polling_until_an_upgrade(
    real: RealCore, workers: tuple[Worker, Worker]
) -> None:
    await connect_free(real, "fred-user", "fred@example.com")
    worker, _ = workers
    fred = await user_id_of(real, "fred@example.com")
    booked = await real.sandbox.book(fred, wait=True)
    assert booked["deliveries"] == []  # no webhooks on a free plan
    assert await worker.run_once() == 1
    assert meetings_in_db(real) == [(booked["event"]["uri"], "active")]
    ((sync_due, synced_at),) = owner_sql(
        real, "SELECT sync_due, synced_at FROM connection_maintenance"
    )
    assert isinstance(sync_due, datetime)
    assert isinstance(synced_at, datetime)
    # Polled every PLAN_POLL_SECONDS (30 minutes unless watched, DR-42, less up to a tenth:
    # connections drift apart), not every week.
    assert timedelta(minutes=27) <= sync_due - synced_at <= timedelta(minutes=30)

    await real.sandbox.control("PATCH", f"/_sandbox/users/{fred}", {"plan": "standard"}, expect=200)
    # Nobody says so: the next poll's answers announce a paid plan's limit (X-RateLimit-Limit
    # 500, not 50), which makes the subscription due at once (DR-45).
    due_now(real, "sync_due")
    assert await worker.run_once() == 1  # the poll
    assert await worker.run_once() == 1  # the subscription check it asked for
    assert owner_sql(real, "SELECT webhook_status FROM calendar_connections") == [
        (WebhookStatus.ACTIVE.value,)
    ]
    assert [s["state"] for s in await subscriptions(real)] == ["active"]
    ((sync_due,),) = owner_sql(real, "SELECT sync_due FROM connection_maintenance")
    assert isinstance(sync_due, datetime)
    assert sync_due > datetime.now(tz=UTC) + timedelta(hours=1)  # polling slowed down


async def test_a_429_is_waited_out_without_a_token_refresh(
    real: RealCore, workers: tuple[Worker, Worker]
) -> None:
    await real.connect("alice", "ada@example.com")
    worker, _ = workers
    await real.sandbox.fault("GET /scheduled_events", status=429, reset_seconds=1, count=1)
    await real.sandbox.control("DELETE", "/_sandbox/calls", expect=204)
    assert await worker.run_once() == 1
    routes = [c["route"] for c in await real.sandbox.calls()]
    assert routes.count("GET /scheduled_events") == 2  # refused once, then waited out
    assert "POST /oauth/token" not in routes
    ((error, synced),) = owner_sql(real, "SELECT last_error, synced_at FROM connection_maintenance")
    assert error is None
    assert synced is not None


async def test_a_burst_of_5xx_is_retried(real: RealCore, workers: tuple[Worker, Worker]) -> None:
    await real.connect("alice", "ada@example.com")
    worker, _ = workers
    await real.sandbox.fault("GET /scheduled_events", status=503, count=2)
    assert await worker.run_once() == 1
    ((error, synced),) = owner_sql(real, "SELECT last_error, synced_at FROM connection_maintenance")
    assert error is None
    assert synced is not None


async def test_two_workers_never_work_on_one_connection_at_once(
    real: RealCore, workers: tuple[Worker, Worker]
) -> None:
    for n in range(6):
        await real.connect(f"user{n}", f"host{n}@example.com")
    await real.sandbox.control("DELETE", "/_sandbox/calls", expect=204)
    first, second = workers
    handled = await asyncio.gather(first.run_once(), second.run_once())
    assert sum(handled) == 6
    calls = await real.sandbox.calls("GET /scheduled_events")
    per_user = [c["user"] for c in calls]
    assert len(per_user) == 6
    assert len(set(per_user)) == 6  # each connection synced exactly once


async def test_broken_connections_back_off_and_a_new_user_is_served_at_once(
    real: RealCore,
) -> None:
    """Issue 10, finding 2 (RELIABILITY row 30): eight connections whose tokens cannot be
    decrypted (as after a key was dropped from TOKEN_ENCRYPTION_KEY) are each tried once and
    then left alone, while a user who connects meanwhile gets a first sync within seconds."""
    for n in range(8):
        await real.connect(f"broken{n}", f"broken{n}@example.com")
    # Each broken row's access token now fails authentication (sealed for another column).
    owner_sql(real, "UPDATE calendar_connections SET access_token_enc = refresh_token_enc")
    owner_sql(real, "UPDATE connection_maintenance SET sync_due = now() - interval '1 hour'")
    await real.connect("newcomer", "newcomer@example.com")
    # A first back-off of 30-60 s: longer than this test, however slow the machine.
    settings = settings_for(real, WORKER_RETRY_BASE_MILLISECONDS="60000")
    container = Container(settings=settings)
    worker = await build_worker(container, settings)
    stop = asyncio.Event()

    def newcomer_synced() -> bool:
        rows = owner_sql(
            real, "SELECT synced_at FROM connection_maintenance WHERE user_id = 'newcomer'"
        )
        return rows == [] or rows[0][0] is not None

    with capture_logs() as logged:
        running = asyncio.create_task(worker.run(stop))
        try:
            for _ in range(200):  # bounded: 20 s at most, normally well under one
                if newcomer_synced() and worker.handled >= 9:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # more rounds: a broken connection must not come back
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)
            await resolve(container.shutdown_resources())
    assert newcomer_synced()
    broken = owner_sql(
        real,
        "SELECT failures, last_error, retry_at > now()"
        " FROM connection_maintenance WHERE user_id LIKE 'broken%%' ORDER BY user_id",
    )
    unreadable = (
        "DecryptionFailed: the stored credentials cannot be decrypted with the configured keys"
    )
    assert broken == [(1, unreadable, True)] * 8  # once each, no loop
    # Issue 14: said once per connection, with the fix, and no traceback.
    said = [e for e in logged if e["event"] == "worker.stored_secret_unreadable"]
    assert len(said) == 8
    assert len({e["connection_id"] for e in said}) == 8
    assert all("TOKEN_ENCRYPTION_KEY" in e["fix"] for e in said)
    assert not [e for e in logged if e["event"] == "worker.maintenance_failed"]


async def test_a_failing_connection_backs_off_further_each_time(
    real: RealCore, workers: tuple[Worker, Worker]
) -> None:
    await real.connect("alice", "ada@example.com")
    owner_sql(real, "UPDATE calendar_connections SET access_token_enc = refresh_token_enc")
    worker, _ = workers
    waits = []
    for _ in range(4):
        due_now(real, "sync_due")
        owner_sql(real, "UPDATE connection_maintenance SET retry_at = NULL")
        assert await worker.run_once() == 1
        ((wait,),) = owner_sql(
            real, "SELECT extract(epoch FROM retry_at - now()) FROM connection_maintenance"
        )
        waits.append(float(str(wait)))
    assert await worker.run_once() == 0  # backing off: not claimed
    # 5 s doubling, jittered over the upper half: 2.5-5, 5-10, 10-20, 20-40 s.
    for n, wait in enumerate(waits):
        assert 2.5 * 2**n - 1 <= wait <= 5 * 2**n, waits


async def test_a_connection_the_worker_keeps_failing_on_shows_it_in_its_status(
    real: RealCore, workers: tuple[Worker, Worker]
) -> None:
    from domain.usecases.queries import GetConnectionStatus

    await real.connect("alice", "ada@example.com")
    status = GetConnectionStatus(real.uow)  # type: ignore[arg-type]
    assert (await status("alice")).maintenance is None
    worker, _ = workers
    await real.sandbox.fault("GET /scheduled_events", status=503, count=20)
    assert await worker.run_once() == 1
    trouble = (await status("alice")).maintenance
    assert trouble is not None
    assert trouble.failures == 1
    assert trouble.last_error == "CalendlyUnavailable: Calendly answered 503"
    assert trouble.retry_at is not None
    assert trouble.retry_at > datetime.now(tz=UTC)


class StuckPruning:
    """A first prune over a huge backlog: it takes as long as the test lets it."""

    behind = False

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def prune(self, max_batches: int = 100) -> dict[str, int]:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return {}


@asynccontextmanager
async def running_worker(real: RealCore, **parts: Any) -> AsyncIterator[Worker]:
    """A worker loop (`Worker.run`) on this core, with `parts` in place of its own, and Alice's
    connection due; stopped (and waited for) on the way out."""
    await real.connect("alice", "alice@example.com")
    owner_sql(real, "UPDATE connection_maintenance SET sync_due = now() - interval '1 hour'")
    settings = settings_for(real)
    container = Container(settings=settings)
    await build_worker(container, settings)  # the worker's own Calendly client settings
    worker = Worker(
        queue=await resolve(container.maintenance_queue()),
        maintain=await resolve(container.maintain_connection()),
        settings=settings,
        **parts,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await resolve(container.shutdown_resources())


async def test_a_long_prune_never_holds_the_claims_back(real: RealCore) -> None:
    stuck = StuckPruning()
    async with running_worker(real, storage=stuck) as worker:
        await asyncio.wait_for(stuck.started.wait(), 10)
        for _ in range(100):  # the prune is still running: alice is handled all the same
            if worker.handled:
                break
            await asyncio.sleep(0.1)
        assert worker.handled == 1
    assert stuck.cancelled  # and a stop does not wait for it


class EndlessSweep:
    """An outage's sweep over a million connections: every batch full, each a moment long."""

    def __init__(self) -> None:
        self.batches = 0

    async def sweep(self, now: datetime | None = None) -> int:
        self.batches += 1
        await asyncio.sleep(0.02)
        return 5_000


async def test_a_long_outage_sweep_never_holds_the_claims_back(real: RealCore) -> None:
    # One batch a loop turn (DR-45): a connection due meanwhile is handled all the same.
    sweep = EndlessSweep()
    async with running_worker(real, webhook_health=sweep) as worker:
        for _ in range(100):
            if worker.handled and sweep.batches > 3:
                break
            await asyncio.sleep(0.1)
        assert worker.handled == 1
        assert sweep.batches > 3  # the sweep went on beside it, a batch a turn


async def test_a_pass_ending_while_the_database_is_away_frees_its_connection_once_back(
    real: RealCore,
) -> None:
    # The pass's record (COMPLETE) fails: the worker tries again until it lands, instead of
    # leaving the connection leased (and its work waiting) for a whole lease.
    await real.connect("alice", "ada@example.com")
    owner_sql(real, "UPDATE connection_maintenance SET sync_due = now() - interval '1 hour'")
    settings = settings_for(real)
    container = Container(settings=settings)
    try:
        queue = await resolve(container.maintenance_queue())
        failures = [StorageUnavailable("down"), StorageUnavailable("still down")]

        class Flaky:
            def __getattr__(self, name: str) -> Any:
                return getattr(queue, name)

            async def complete(self, *args: Any) -> None:
                if failures:
                    raise failures.pop(0)
                await queue.complete(*args)

        worker = Worker(
            queue=Flaky(),
            maintain=await resolve(container.maintain_connection()),
            settings=settings,
        )
        assert await worker.run_once() == 1
        assert failures == []
        assert owner_sql(real, "SELECT lease_owner FROM connection_maintenance") == [(None,)]
    finally:
        await resolve(container.shutdown_resources())
