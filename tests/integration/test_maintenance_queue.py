"""The maintenance queue on Postgres: scheduled by triggers, leased to one worker at a time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from adapters.postgres.maintenance import PostgresMaintenanceQueue
from domain.ports import MaintenanceResult, UnitOfWorkFactory
from tests.integration.conftest import Pool
from tests.support.connections import add, connection

NOW = datetime.now(tz=UTC)


def cid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def owner_sql(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query.encode(), params)
        return cursor.fetchall() if cursor.description else []


async def claim(
    queue: PostgresMaintenanceQueue, owner: str, limit: int = 10, lease: float = 60
) -> list[str]:
    found = await queue.claim(
        owner=owner, limit=limit, lease_seconds=lease, refresh_margin_seconds=300
    )
    return sorted(d.connection_id for d in found)


async def test_a_new_connection_is_due_at_once_and_leased_to_one_worker(
    pool: Pool, pg_uow: UnitOfWorkFactory
) -> None:
    await add(pg_uow, connection("a", 1, cid(1)))
    queue = PostgresMaintenanceQueue(pool)
    assert await claim(queue, "w1") == [cid(1)]
    assert await claim(queue, "w2") == []


async def test_a_dead_workers_lease_runs_out_and_is_taken_over(
    pool: Pool, pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    await add(pg_uow, connection("a", 1, cid(1)))
    queue = PostgresMaintenanceQueue(pool)
    assert await claim(queue, "w1", lease=0.2) == [cid(1)]
    await asyncio.sleep(0.3)  # w1 died: nobody completes
    assert await claim(queue, "w2") == [cid(1)]
    rows = owner_sql(database_url, "SELECT lease_owner FROM connection_maintenance")
    assert rows == [("w2",)]


async def test_concurrent_claims_never_share_a_connection(
    pool: Pool, pg_uow: UnitOfWorkFactory
) -> None:
    for n in range(1, 21):
        await add(pg_uow, connection(f"user{n}", n, cid(n)))
    queue = PostgresMaintenanceQueue(pool)
    first, second, third = await asyncio.gather(
        claim(queue, "w1", 8), claim(queue, "w2", 8), claim(queue, "w3", 8)
    )
    assert not set(first) & set(second)
    assert not set(first) & set(third)
    assert not set(second) & set(third)
    assert len(first) + len(second) + len(third) == 20


async def test_completing_schedules_the_next_run_and_releases(
    pool: Pool, pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    await add(pg_uow, connection("a", 1, cid(1)))
    queue = PostgresMaintenanceQueue(pool)
    (due,) = await queue.claim(owner="w1", limit=1, lease_seconds=60, refresh_margin_seconds=300)
    later = NOW + timedelta(hours=1)
    await queue.complete(
        due, "w1", MaintenanceResult(subscription_due=later, sync_due=later, synced_at=NOW)
    )
    # The token in the test connection expired long ago, so a refresh is what is due now.
    owner_sql(database_url, "UPDATE connection_maintenance SET refresh_due = %s", later)
    assert await claim(queue, "w2") == []
    ((owner, failures, synced),) = owner_sql(
        database_url, "SELECT lease_owner, failures, synced_at FROM connection_maintenance"
    )
    assert (owner, failures, synced) == (None, 0, NOW)


async def test_a_lost_lease_is_not_overwritten(
    pool: Pool, pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    await add(pg_uow, connection("a", 1, cid(1)))
    queue = PostgresMaintenanceQueue(pool)
    (due,) = await queue.claim(owner="w1", limit=1, lease_seconds=0.1, refresh_margin_seconds=0)
    await asyncio.sleep(0.2)
    assert await claim(queue, "w2") == [cid(1)]
    await queue.complete(due, "w1", MaintenanceResult(error="late"))
    assert owner_sql(
        database_url, "SELECT lease_owner, last_error FROM connection_maintenance"
    ) == [("w2", None)]


async def test_token_expiry_reconnects_and_disconnects_reach_the_schedule(
    pool: Pool, pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    stored = await add(pg_uow, connection("a", 1, cid(1)))
    expires = NOW + timedelta(hours=2)
    owner_sql(
        database_url,
        "UPDATE connection_maintenance SET sync_due = now() + interval '1 day',"
        " subscription_due = now() + interval '1 day'",
    )
    async with pg_uow("a") as uow:
        from msgspec.structs import replace

        assert stored.tokens is not None
        tokens = replace(stored.tokens, expires_at=expires)
        saved = await uow.connections.save(replace(stored, tokens=tokens))
        await uow.commit()
    ((refresh_due, sync_due),) = owner_sql(
        database_url, "SELECT refresh_due, sync_due FROM connection_maintenance"
    )
    assert refresh_due == expires
    assert sync_due > NOW  # a token refresh alone asks for no reconciliation
    async with pg_uow("a") as uow:
        saved = await uow.connections.save(saved.needing_reauth("gone", NOW))
        await uow.commit()
    ((sync_due,),) = owner_sql(database_url, "SELECT sync_due FROM connection_maintenance")
    assert sync_due <= datetime.now(tz=UTC)
    # The host hears of it through the change log (host webhooks, DR-34), not the old outbox.
    assert owner_sql(database_url, "SELECT count(*) FROM host_notifications") == [(0,)]
    events = owner_sql(database_url, "SELECT event FROM change_log ORDER BY user_seq DESC LIMIT 1")
    assert events == [("connection.needs_reauth",)]
    async with pg_uow("a") as uow:
        await uow.connections.save(saved.disconnected(NOW))
        await uow.commit()
    assert owner_sql(database_url, "SELECT count(*) FROM connection_maintenance") == [(0,)]
