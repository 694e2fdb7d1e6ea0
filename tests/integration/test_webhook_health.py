"""The webhook endpoint's health record and the sweep after an outage (DR-45), on Postgres."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg

from adapters.postgres.webhook_health import (
    MAX_FAILED_CONNECTIONS,
    FailedDeliveries,
    PostgresWebhookHealth,
)
from domain.ports import UnitOfWorkFactory
from tests.integration.conftest import Pool
from tests.support.connections import add, cid, connection, owner_sql

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
FAR = T0 + timedelta(days=30)
SECOND = timedelta(seconds=1)


def outages(url: str) -> list[tuple[object, ...]]:
    return owner_sql(
        url,
        "SELECT started_at, ended_at, cause, swept_at IS NOT NULL FROM webhook_outages ORDER BY id",
    )


def dues(url: str) -> dict[str, tuple[datetime, datetime]]:
    rows = owner_sql(
        url, "SELECT connection_id::text, subscription_due, sync_due FROM connection_maintenance"
    )
    return {str(c): (s, y) for c, s, y in rows}


async def connections(pg_uow: UnitOfWorkFactory, url: str, n: int) -> None:
    """`n` connections whose every kind of work is a month away."""
    for k in range(1, n + 1):
        await add(pg_uow, connection(f"user{k}", k, cid(k)))
    owner_sql(
        url, "UPDATE connection_maintenance SET subscription_due = %s, sync_due = %s", FAR, FAR
    )


def shared_url_failure(at: datetime) -> FailedDeliveries:
    return FailedDeliveries(since=at, unknown=True)


async def test_a_gap_in_the_beats_and_5xx_on_the_shared_url_are_outages(
    database_url: str, pool: Pool
) -> None:
    health = PostgresWebhookHealth(pool, gap=timedelta(seconds=30))
    assert not await health.beat(now=T0)  # the first beat ever: nothing was there before
    assert not await health.beat(now=T0 + timedelta(seconds=10))
    assert outages(database_url) == []
    # Nobody beat for 10 minutes: unreachable from the last beat to this one.
    back = T0 + timedelta(minutes=10)
    assert await health.beat(now=back)
    assert outages(database_url) == [(T0 + timedelta(seconds=10), back, "unreachable", False)]
    # Beats every 20 s are health; then a 5xx on the shared URL (whose connection is not
    # known): an outage of its own, from the failure to the beat.
    for n in (20, 40, 60):
        assert not await health.beat(now=back + timedelta(seconds=n))
    failed = back + timedelta(seconds=65)
    assert await health.beat(shared_url_failure(failed), now=back + timedelta(seconds=70))
    assert outages(database_url)[1:] == [(failed, back + timedelta(seconds=70), "errors", False)]


async def test_5xx_on_connections_own_urls_check_those_connections_only(
    database_url: str, pool: Pool, pg_uow: UnitOfWorkFactory
) -> None:
    await connections(pg_uow, database_url, 3)
    tokens = dict(
        owner_sql(
            database_url, "SELECT connection_id::text, webhook_token FROM calendly_webhook_routes"
        )
    )
    settle = timedelta(seconds=60)
    health = PostgresWebhookHealth(pool, settle=settle)
    await health.beat(now=T0)
    failed = FailedDeliveries(since=T0, tokens={tokens[cid(1)], "no-such-token"})
    assert not await health.beat(failed, now=T0 + timedelta(seconds=10))  # no outage of all
    assert outages(database_url) == []
    after = dues(database_url)
    assert after.pop(cid(1)) == (T0 + timedelta(seconds=10) + settle,) * 2
    assert set(after.values()) == {(FAR, FAR)}
    # A row a worker holds (its pass may have read the subscription already) gets the time
    # outright, so that the pass's completion keeps it.
    past = T0 - timedelta(minutes=1)
    owner_sql(
        database_url,
        "UPDATE connection_maintenance SET subscription_due = %s, sync_due = %s,"
        " lease_owner = 'w1', lease_until = %s WHERE connection_id = %s",
        past,
        past,
        T0 + timedelta(hours=1),
        cid(2),
    )
    held = FailedDeliveries(since=T0, tokens={tokens[cid(2)]})
    await health.beat(held, now=T0 + timedelta(seconds=12))
    assert dues(database_url)[cid(2)] == (T0 + timedelta(seconds=12) + settle,) * 2
    # Too many to name: an outage of all.
    many = FailedDeliveries(since=T0, tokens={f"t{n}" for n in range(MAX_FAILED_CONNECTIONS + 1)})
    assert await health.beat(many, now=T0 + timedelta(seconds=20))
    assert [o[2] for o in outages(database_url)] == ["errors"]


async def test_failures_beat_after_beat_grow_one_outage(database_url: str, pool: Pool) -> None:
    health = PostgresWebhookHealth(pool, gap=timedelta(seconds=30))
    await health.beat(now=T0)
    for n in range(1, 4):
        at = T0 + timedelta(seconds=10 * n)
        await health.beat(shared_url_failure(at - timedelta(seconds=3)), now=at)
    assert outages(database_url) == [
        (T0 + timedelta(seconds=7), T0 + timedelta(seconds=30), "errors", False)
    ]


async def test_the_sweep_waits_for_health_and_makes_webhook_connections_due_soon(
    database_url: str, pool: Pool, pg_uow: UnitOfWorkFactory
) -> None:
    await connections(pg_uow, database_url, 5)
    # A free-plan connection: its webhooks never worked, an outage of ours cannot hurt it.
    owner_sql(
        database_url,
        "UPDATE connection_maintenance SET webhooks = false WHERE connection_id = %s",
        cid(5),
    )
    # One already due sooner than the sweep would make it stays as it is.
    soon = T0 + timedelta(seconds=30)
    owner_sql(
        database_url,
        "UPDATE connection_maintenance SET subscription_due = %s WHERE connection_id = %s",
        soon,
        cid(4),
    )
    spread = timedelta(minutes=5)
    health = PostgresWebhookHealth(pool, settle=timedelta(seconds=60), spread=spread, batch=2)
    await health.beat(now=T0 - timedelta(hours=2))
    await health.beat(now=T0)  # two hours unreachable, ended at T0
    assert await health.sweep(T0 + timedelta(seconds=59)) == 0  # not healthy for long enough
    before = dues(database_url)
    assert before.pop(cid(4)) == (soon, FAR)
    assert all(due == (FAR, FAR) for due in before.values())

    after = T0 + timedelta(seconds=60)
    assert [await health.sweep(after) for _ in range(3)] == [2, 2, 0]  # batches of 2, then done
    assert outages(database_url)[0][3] is True
    swept = dues(database_url)
    assert swept.pop(cid(5)) == (FAR, FAR)
    assert swept[cid(4)][0] == soon
    for subscription_due, sync_due in swept.values():
        assert after <= sync_due <= after + spread
        assert subscription_due <= after + spread
    assert await health.sweep(after) == 0  # nothing left: no statement finds an outage


async def test_a_connection_held_by_a_worker_gets_the_sweeps_time_whatever_it_had(
    database_url: str, pool: Pool, pg_uow: UnitOfWorkFactory
) -> None:
    # Its pass may have read Calendly before the outage ended: the sweep's time differs from
    # what the pass claimed, so the pass's completion keeps it (adapters/postgres/maintenance).
    await connections(pg_uow, database_url, 1)
    past = T0 - timedelta(minutes=1)
    owner_sql(
        database_url,
        "UPDATE connection_maintenance SET subscription_due = %s, sync_due = %s,"
        " lease_owner = 'w1', lease_until = %s",
        past,
        past,
        T0 + timedelta(minutes=2),
    )
    health = PostgresWebhookHealth(pool, settle=timedelta(0), spread=timedelta(0))
    await health.beat(now=T0 - timedelta(hours=1))
    await health.beat(now=T0)
    assert await health.sweep(T0 + SECOND) == 1
    assert dues(database_url)[cid(1)] == (T0 + SECOND, T0 + SECOND)


async def test_a_row_deleted_under_the_sweep_does_not_end_it_early(
    database_url: str, pool: Pool, pg_uow: UnitOfWorkFactory
) -> None:
    await connections(pg_uow, database_url, 4)
    health = PostgresWebhookHealth(pool, settle=timedelta(0), spread=timedelta(0), batch=2)
    await health.beat(now=T0 - timedelta(hours=1))
    await health.beat(now=T0)
    # A disconnect holds the first row while the sweep's batch waits for it, then deletes it.
    with psycopg.connect(database_url, autocommit=False) as holder:
        holder.execute(
            "SELECT 1 FROM connection_maintenance WHERE connection_id = %s FOR UPDATE", (cid(1),)
        )
        sweeping = asyncio.create_task(health.sweep(T0 + SECOND))
        await asyncio.sleep(0.3)
        assert not sweeping.done()  # waiting for the row
        holder.execute("DELETE FROM connection_maintenance WHERE connection_id = %s", (cid(1),))
        holder.commit()
        assert await sweeping == 1  # the batch of two lost one row
    assert outages(database_url)[0][3] is False  # not done: the batch it picked was full
    assert await health.sweep(T0 + SECOND) == 2
    assert await health.sweep(T0 + SECOND) == 0
    assert all(due == (T0 + SECOND,) * 2 for due in dues(database_url).values())


async def test_an_outage_that_grows_again_is_swept_again(
    database_url: str, pool: Pool, pg_uow: UnitOfWorkFactory
) -> None:
    await connections(pg_uow, database_url, 1)
    health = PostgresWebhookHealth(pool, settle=timedelta(0), spread=timedelta(0))
    await health.beat(now=T0)
    await health.beat(shared_url_failure(T0 + SECOND), now=T0 + timedelta(seconds=5))
    assert await health.sweep(T0 + timedelta(seconds=6)) == 1
    owner_sql(database_url, "UPDATE connection_maintenance SET subscription_due = %s", FAR)
    await health.beat(
        shared_url_failure(T0 + timedelta(seconds=12)), now=T0 + timedelta(seconds=15)
    )
    assert len(outages(database_url)) == 1
    assert await health.sweep(T0 + timedelta(seconds=16)) == 1
    assert dues(database_url)[cid(1)][0] == T0 + timedelta(seconds=16)
