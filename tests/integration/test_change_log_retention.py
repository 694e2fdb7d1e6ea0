"""The change log's retention (migrations/0010, adapters/postgres/changes.py; DR-35) on a real
Postgres, as the runtime role: old rows go in feed order and in batches, rows a host webhook
still needs stay, and a cursor from before the pruned position is refused, not silently short."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import psycopg_pool
import pytest

from adapters.postgres.changes import PostgresChangeFeed, PostgresChangeLogRetention
from adapters.postgres.host_webhooks import EndpointConfig, PostgresHostWebhooks
from domain.changes import ChangePosition
from domain.errors import CursorExpired
from entrypoints.container import Container, resolve
from entrypoints.service.worker import build_worker
from tests.support.postgres import add_bare_connection, runtime_connection
from tests.support.real_core import RealCore, settings_for

Pool = psycopg_pool.AsyncConnectionPool[Any]
SET_TENANT = "SELECT set_config('app.user_id', %s, true)"


runtime = runtime_connection


def connect_user(url: str, user: str) -> str:
    """A connection row for `user` (one change: connection.updated)."""
    return add_bare_connection(url, user)


def add_meeting(url: str, user: str, cid: str) -> None:
    with runtime(url) as conn, conn.transaction():
        conn.execute(SET_TENANT, (user,))
        conn.execute(
            "INSERT INTO meetings (user_id, connection_id, event_uri, status)"
            " VALUES (%s, %s, %s, 'active')",
            (user, cid, f"ev-{uuid.uuid4()}"),
        )


def log(url: str) -> list[tuple[ChangePosition, str, int]]:
    """The whole log in feed order (as the owner): (position, user, user_seq)."""
    with psycopg.connect(url) as admin:
        rows = admin.execute(
            "SELECT xid::text, id, user_id, user_seq FROM change_log"
            " ORDER BY change_log.xid, change_log.id"  # the xid8, not its text
        ).fetchall()
    return [(ChangePosition(int(x), i), u, s) for x, i, u, s in rows]


def age(url: str, user: str, seqs: list[int], days: int = 20) -> None:
    with psycopg.connect(url) as admin:
        admin.execute(
            "UPDATE change_log SET created_at = now() - make_interval(days => %s)"
            " WHERE user_id = %s AND user_seq = ANY(%s)",
            (days, user, seqs),
        )


async def prune_until(retention: PostgresChangeLogRetention, expected: int) -> int:
    """Prune, again while a transaction elsewhere in the cluster still holds the horizon back."""
    total = 0
    for _ in range(100):
        total += await retention.prune()
        if total >= expected:
            return total
        await asyncio.sleep(0.1)
    return total


async def test_old_rows_go_in_feed_order_and_an_older_cursor_expires(
    database_url: str, pool: Pool
) -> None:
    a = connect_user(database_url, "a")
    add_meeting(database_url, "a", a)
    add_meeting(database_url, "a", a)
    b = connect_user(database_url, "b")
    add_meeting(database_url, "b", b)
    add_meeting(database_url, "b", b)
    rows = log(database_url)
    assert [(u, s) for _, u, s in rows] == [
        ("a", 1),
        ("a", 2),
        ("a", 3),
        ("b", 1),
        ("b", 2),
        ("b", 3),
    ]
    # a's three and b's last two are old; b's first is not: the prefix stops there.
    age(database_url, "a", [1, 2, 3])
    age(database_url, "b", [2, 3])
    retention = PostgresChangeLogRetention(pool, days=14)
    assert await prune_until(retention, 3) == 3
    assert await retention.prune() == 0
    assert [(u, s) for _, u, s in log(database_url)] == [("b", 1), ("b", 2), ("b", 3)]
    pruned_up_to = await retention.pruned_up_to()
    assert pruned_up_to == rows[2][0]

    feed = PostgresChangeFeed(pool)
    for expired in (ChangePosition(0, 0), rows[0][0], rows[1][0]):
        with pytest.raises(CursorExpired):
            await feed.read(expired, 10)
    # At the pruned position, or after it, nothing was lost: the feed goes on.
    assert [c.user_seq for c in await feed.read(pruned_up_to, 10)] == [1, 2, 3]
    assert [c.user_seq for c in await feed.read(rows[3][0], 10)] == [2, 3]
    # From the start: what is left (a back end starting afresh resyncs first anyway).
    assert [c.user_id for c in await feed.read(None, 10)] == ["b", "b", "b"]


async def test_it_prunes_in_bounded_batches(database_url: str, pool: Pool) -> None:
    cid = connect_user(database_url, "a")
    for _ in range(6):
        add_meeting(database_url, "a", cid)
    age(database_url, "a", list(range(1, 8)))
    retention = PostgresChangeLogRetention(pool, days=14, batch=3)
    first = 0
    for _ in range(100):
        first = await retention.prune_batch()
        if first:
            break
        await asyncio.sleep(0.1)
    assert first == 3
    assert len(log(database_url)) == 4
    assert await retention.prune() == 4  # batches until a short one
    assert log(database_url) == []


async def test_rows_a_host_webhook_still_needs_stay(database_url: str, pool: Pool) -> None:
    store = PostgresHostWebhooks(pool)
    await store.upsert_endpoints([EndpointConfig(name="crm", url="http://127.0.0.1:9/")])
    cid = connect_user(database_url, "a")
    add_meeting(database_url, "a", cid)
    add_meeting(database_url, "a", cid)
    age(database_url, "a", [1, 2, 3])
    retention = PostgresChangeLogRetention(pool, days=14)
    await asyncio.sleep(0.3)
    # Not fanned out yet: the endpoint's position is before every row.
    assert await retention.prune() == 0
    fanned = 0
    for _ in range(100):
        fanned += await store.fan_out("crm")
        if fanned == 3:
            break
        await asyncio.sleep(0.1)
    assert fanned == 3
    # Fanned out, nothing delivered: the stream needs all three.
    assert await retention.prune() == 0
    (stream,) = await store.claim("crm", "me", 1)
    assert await store.advance(stream, "me", 2)
    # Delivered up to 2: those two go, the third stays.
    assert await retention.prune() == 2
    assert [s for _, _, s in log(database_url)] == [3]
    assert await store.advance(stream, "me", 3)
    assert await retention.prune() == 1
    assert log(database_url) == []


async def test_a_young_row_is_kept_even_when_nobody_needs_it(database_url: str, pool: Pool) -> None:
    connect_user(database_url, "a")
    await asyncio.sleep(0.3)
    assert await PostgresChangeLogRetention(pool, days=1).prune() == 0
    assert len(log(database_url)) == 1


async def test_only_the_retention_scope_deletes_across_tenants(database_url: str) -> None:
    connect_user(database_url, "a")
    connect_user(database_url, "b")

    def deleted(scope: str, tenant: str | None) -> int:
        with runtime(database_url) as conn, conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config('app.scope', %s, true)", (scope,))
            if tenant is not None:
                conn.execute(SET_TENANT, (tenant,))
            return conn.execute("DELETE FROM change_log").rowcount

    assert deleted("host", None) == 0
    assert deleted("retention", "a") == 1  # a tenant reaches its own rows only
    assert deleted("retention", None) == 2
    with runtime(database_url) as conn, conn.transaction(force_rollback=True):
        conn.execute(SET_TENANT, ("a",))
        assert conn.execute("UPDATE change_log_pruned SET id = 5").rowcount == 0


async def test_the_worker_prunes_when_it_starts_with_the_configured_retention(
    real: RealCore,
) -> None:
    await real.connect("alice", "ada@example.com")
    before = log(real.database_url)
    assert before
    age(real.database_url, "alice", [s for _, _, s in before], days=10)
    # Ten days old: kept under the default 14, pruned under 7.
    for days, left in (("14", len(before)), ("7", 0)):
        settings = settings_for(real, CHANGE_LOG_RETENTION_DAYS=days)
        container = Container(settings=settings)
        worker = await build_worker(container, settings)
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        try:
            for _ in range(100):
                if len(log(real.database_url)) == left:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)
            await resolve(container.shutdown_resources())
        assert len(log(real.database_url)) == left


async def test_a_user_pruned_away_goes_on_from_their_last_number_and_is_still_sent(
    database_url: str, pool: Pool
) -> None:
    """Review finding: numbering came from the rows left, so pruning a quiet user's every row
    restarted it at 1 while their stream stood at the old head: nothing more was sent."""
    store = PostgresHostWebhooks(pool)
    await store.upsert_endpoints([EndpointConfig(name="crm", url="http://127.0.0.1:9/")])
    cid = connect_user(database_url, "quiet")
    add_meeting(database_url, "quiet", cid)
    assert await store.fan_out("crm") == 2
    [claimed] = await store.claim("crm", "w1", limit=10)
    assert await store.advance(claimed, "w1", 2)
    assert await store.settle("w1", [(claimed, 2)]) == {("crm", "quiet")}
    age(database_url, "quiet", [1, 2])
    assert await prune_until(PostgresChangeLogRetention(pool, days=14), 2) == 2
    assert log(database_url) == []

    add_meeting(database_url, "quiet", cid)

    assert [(u, s) for _, u, s in log(database_url)] == [("quiet", 3)]
    assert await store.fan_out("crm") == 1
    [again] = await store.claim("crm", "w1", limit=10)
    assert [c.user_seq for c in await store.pending(again)] == [3]
