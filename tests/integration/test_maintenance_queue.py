"""The maintenance queue on Postgres: scheduled by triggers, leased to one worker at a time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg

from adapters.postgres.maintenance import CLAIM, PostgresMaintenanceQueue
from domain.meetings import Meeting
from domain.ports import MaintenanceResult, MeetingChange, UnitOfWorkFactory
from tests.integration.conftest import Pool
from tests.support.connections import EV, add, cid, connection, owner_sql

NOW = datetime.now(tz=UTC)


async def claim(
    queue: PostgresMaintenanceQueue, owner: str, limit: int = 10, lease: float = 60
) -> list[str]:
    found = await queue.claim(
        owner=owner, limit=limit, lease_seconds=lease, now=datetime.now(tz=UTC)
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
    (due,) = await queue.claim(owner="w1", limit=1, lease_seconds=60, now=datetime.now(tz=UTC))
    later = NOW + timedelta(hours=1)
    await queue.complete(
        due,
        "w1",
        MaintenanceResult(subscription_due=later, sync_due=later, grant_due=later, synced_at=NOW),
    )
    # The token in the test connection expired long ago: that alone makes nothing due (DR-45).
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
    (due,) = await queue.claim(owner="w1", limit=1, lease_seconds=0.1, now=datetime.now(tz=UTC))
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
        " subscription_due = now() + interval '1 day', grant_due = now() + interval '1 day'",
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
    assert await claim(PostgresMaintenanceQueue(pool), "w1") == []  # nor for any work
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


def claim_plan(url: str, rows: int) -> str:
    """The claim's plan over `rows` maintenance rows, of which a few are due (as at scale)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # bulk rows: no FK to check
        conn.execute(
            "INSERT INTO connection_maintenance (connection_id, user_id, subscription_due,"
            " sync_due, grant_due)"
            " SELECT gen_random_uuid(), 'bulk-' || g, now() + g * interval '1 second',"
            " now() + interval '7 days', now() + interval '1 day'"
            " FROM generate_series(-20, %s) g",
            (rows - 21,),
        )
        conn.execute("ANALYZE connection_maintenance")
        with psycopg.ClientCursor(conn) as cursor:  # EXPLAIN takes no server-side parameters
            cursor.execute(
                ("EXPLAIN (FORMAT TEXT) " + CLAIM).encode(),
                {"owner": "w1", "limit": 8, "lease": timedelta(minutes=2), "now": NOW},
            )
            return "\n".join(str(row[0]) for row in cursor.fetchall())


def test_the_claim_reads_the_due_index_and_never_the_whole_table(database_url: str) -> None:
    plan = claim_plan(database_url, 50_000)
    assert "connection_maintenance_due_at" in plan, plan
    assert "Seq Scan on connection_maintenance" not in plan, plan


async def test_due_at_holds_back_offs_and_leases(
    pool: Pool, pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    await add(pg_uow, connection("a", 1, cid(1)))
    queue = PostgresMaintenanceQueue(pool)
    later = datetime.now(tz=UTC) + timedelta(hours=1)
    owner_sql(database_url, "UPDATE connection_maintenance SET retry_at = %s", later)
    assert await claim(queue, "w1") == []  # work is due, but the back-off runs until later
    ((due_at,),) = owner_sql(database_url, "SELECT due_at FROM connection_maintenance")
    assert due_at == later
    owner_sql(database_url, "UPDATE connection_maintenance SET retry_at = NULL")
    assert await claim(queue, "w1") == [cid(1)]
    ((due_at, lease_until),) = owner_sql(
        database_url, "SELECT due_at, lease_until FROM connection_maintenance"
    )
    assert due_at == lease_until  # leased: due again only if the lease runs out


async def test_a_check_asked_for_during_a_pass_survives_its_completion(
    pool: Pool, pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    # A page opened, or an outage's sweep, while the worker held the row: the pass completes
    # with its own next check a week away, and the sooner one asked for meanwhile stays.
    await add(pg_uow, connection("a", 1, cid(1)))
    queue = PostgresMaintenanceQueue(pool)
    (due,) = await queue.claim(owner="w1", limit=1, lease_seconds=60)
    soon = datetime.now(tz=UTC) + timedelta(minutes=1)
    owner_sql(database_url, "UPDATE connection_maintenance SET subscription_due = %s", soon)
    week = datetime.now(tz=UTC) + timedelta(days=7)
    await queue.complete(due, "w1", MaintenanceResult(subscription_due=week))
    assert owner_sql(database_url, "SELECT subscription_due FROM connection_maintenance") == [
        (soon,)
    ]
    # Nobody asked meanwhile: the pass's own time is written.
    owner_sql(database_url, "UPDATE connection_maintenance SET subscription_due = now()")
    (due,) = await queue.claim(owner="w1", limit=1, lease_seconds=60)
    await queue.complete(due, "w1", MaintenanceResult(subscription_due=week))
    assert owner_sql(database_url, "SELECT subscription_due FROM connection_maintenance") == [
        (week,)
    ]


async def test_a_delivery_lacking_the_event_makes_the_connection_due_and_survives_a_pass(
    pool: Pool, pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    # DR-47: the webhook's own statement asks the worker to read the event; a pass that read
    # what was wanted clears the request, unless a delivery asked again while it worked.
    stored = await add(pg_uow, connection("a", 1, cid(1)))
    queue = PostgresMaintenanceQueue(pool)
    later = datetime.now(tz=UTC) + timedelta(hours=1)
    (due,) = await queue.claim(owner="w1", limit=1, lease_seconds=60)
    await queue.complete(
        due, "w1", MaintenanceResult(subscription_due=later, sync_due=later, grant_due=later)
    )
    assert await claim(queue, "w1") == []
    legacy = MeetingChange(meeting=Meeting(event_uri=EV + "e1"), needs_details=True)
    async with pg_uow("a") as uow:
        await uow.meetings.apply(stored, legacy)
        await uow.commit()
    (due,) = await queue.claim(owner="w1", limit=1, lease_seconds=60)
    assert due.enrich_due is not None
    async with pg_uow("a") as uow:  # ... and another arrives during the pass
        await uow.meetings.apply(stored, legacy)
        await uow.commit()
    await queue.complete(due, "w1", MaintenanceResult(enriched=True, enrich_due=None))
    (again,) = await queue.claim(owner="w1", limit=1, lease_seconds=60)
    assert again.enrich_due is not None
    assert again.enrich_due > due.enrich_due
    await queue.complete(again, "w1", MaintenanceResult(enriched=True, enrich_due=None))
    assert owner_sql(database_url, "SELECT enrich_due FROM connection_maintenance") == [(None,)]
    assert await claim(queue, "w1") == []
    # A pass that did not enrich leaves the request as it is.
    async with pg_uow("a") as uow:
        await uow.meetings.apply(stored, legacy)
        await uow.commit()
    (due,) = await queue.claim(owner="w1", limit=1, lease_seconds=60)
    await queue.complete(due, "w1", MaintenanceResult(error="boom", retry_at=NOW))
    ((kept,),) = owner_sql(database_url, "SELECT enrich_due FROM connection_maintenance")
    assert kept == due.enrich_due
