"""The webhook endpoint's health record and the sweep after an outage (DR-45), on Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from adapters.postgres.webhook_health import PostgresWebhookHealth
from domain.ports import UnitOfWorkFactory
from tests.integration.conftest import Pool
from tests.support.connections import add, cid, connection, owner_sql

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


FAR = T0 + timedelta(days=30)


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


async def test_beats_record_a_gap_and_5xx_answers_as_outages(database_url: str, pool: Pool) -> None:
    health = PostgresWebhookHealth(pool, gap=timedelta(seconds=30))
    assert not await health.beat(T0)  # the first beat ever: nothing was there before
    assert not await health.beat(T0 + timedelta(seconds=10))
    assert outages(database_url) == []
    # Nobody beat for 10 minutes: unreachable from the last beat to this one.
    back = T0 + timedelta(minutes=10)
    assert await health.beat(back)
    assert outages(database_url) == [(T0 + timedelta(seconds=10), back, "unreachable", False)]
    # Beats every 20 s are health; then a 5xx: an outage of its own, from the failure to the
    # beat (not the one before, which ended more than the gap earlier).
    for n in (20, 40, 60):
        assert not await health.beat(back + timedelta(seconds=n))
    failed = back + timedelta(seconds=65)
    assert await health.beat(back + timedelta(seconds=70), failed_since=failed)
    assert outages(database_url)[1:] == [(failed, back + timedelta(seconds=70), "errors", False)]


async def test_failures_beat_after_beat_grow_one_outage(database_url: str, pool: Pool) -> None:
    health = PostgresWebhookHealth(pool, gap=timedelta(seconds=30))
    await health.beat(T0)
    for n in range(1, 4):
        at = T0 + timedelta(seconds=10 * n)
        await health.beat(at, failed_since=at - timedelta(seconds=3))
    assert outages(database_url) == [
        (T0 + timedelta(seconds=7), T0 + timedelta(seconds=30), "errors", False)
    ]


async def test_the_sweep_waits_for_health_and_makes_webhook_connections_due_soon(
    database_url: str, pool: Pool, pg_uow: UnitOfWorkFactory
) -> None:
    for n in range(1, 6):
        await add(pg_uow, connection(f"user{n}", n, cid(n)))
    owner_sql(
        database_url,
        "UPDATE connection_maintenance SET subscription_due = %s, sync_due = %s",
        FAR,
        FAR,
    )
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
    await health.beat(T0 - timedelta(hours=2))
    await health.beat(T0)  # two hours unreachable, ended at T0
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


async def test_an_outage_that_grows_again_is_swept_again(
    database_url: str, pool: Pool, pg_uow: UnitOfWorkFactory
) -> None:
    await add(pg_uow, connection("user1", 1, cid(1)))
    health = PostgresWebhookHealth(pool, settle=timedelta(0), spread=timedelta(0))
    await health.beat(T0)
    await health.beat(T0 + timedelta(seconds=5), failed_since=T0 + timedelta(seconds=1))
    assert await health.sweep(T0 + timedelta(seconds=6)) == 1
    owner_sql(database_url, "UPDATE connection_maintenance SET subscription_due = %s", FAR)
    await health.beat(T0 + timedelta(seconds=15), failed_since=T0 + timedelta(seconds=12))
    assert len(outages(database_url)) == 1
    assert await health.sweep(T0 + timedelta(seconds=16)) == 1
    assert dues(database_url)[cid(1)][0] == T0 + timedelta(seconds=16)
