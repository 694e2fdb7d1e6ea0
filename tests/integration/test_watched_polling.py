"""Free-plan connections polled often while their user watches (DR-42, migrations/0013), on a
real Postgres as the runtime role: a watched free user is due within WATCHED_POLL_SECONDS of
the last sync, an unwatched one not before PLAN_POLL_SECONDS, a paid user is never touched,
one statement marks many users, and the marking stops when the last stream closes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec
import psycopg

from adapters.postgres.watching import MARK_WATCHED, PostgresWatchedPolling
from domain.model import WebhookStatus
from domain.ports import UnitOfWorkFactory
from domain.usecases.queries import GetConnectionStatus
from entrypoints.live import LiveHub, mark_watched
from entrypoints.service.worker import Worker
from tests.integration.conftest import Pool
from tests.support.connections import add, connection
from tests.support.real_core import RealCore, connect_free, owner_sql, user_id_of

WATCHED = timedelta(seconds=30)


def cid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def sql(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query.encode(), params)
        return cursor.fetchall() if cursor.description else []


async def add_free(uow: UnitOfWorkFactory, user_id: str, n: int) -> None:
    free = msgspec.structs.replace(
        connection(user_id, n, cid(n)),
        webhook_status=WebhookStatus.UNAVAILABLE_PLAN,
        subscription_uri=None,
    )
    await add(uow, free)


def synced_long_ago(url: str) -> None:
    """Every connection last synced 10 minutes ago and due as an unwatched one would be:
    PLAN_POLL_SECONDS (30 minutes) after that sync."""
    sql(
        url,
        "UPDATE connection_maintenance SET synced_at = now() - interval '10 minutes',"
        " sync_due = now() + interval '20 minutes'",
    )


def sync_due(url: str) -> dict[str, tuple[datetime, datetime]]:
    rows = sql(url, "SELECT user_id, sync_due, synced_at FROM connection_maintenance")
    return {user: (due, synced) for user, due, synced in rows}


async def test_a_watched_free_user_is_due_within_the_watched_interval_and_no_one_else(
    pool: Pool, pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    await add_free(pg_uow, "watched", 1)
    await add_free(pg_uow, "unwatched", 2)
    await add(pg_uow, connection("paid", 3, cid(3)))  # webhooks: never polled
    synced_long_ago(database_url)
    before = sync_due(database_url)

    marked = await PostgresWatchedPolling(pool, WATCHED).mark(["watched", "paid", "nobody"])

    after = sync_due(database_url)
    assert marked == 1
    due, synced = after["watched"]
    assert due == synced + WATCHED  # due now: its last sync is 10 minutes old
    assert due <= datetime.now(tz=UTC)
    assert after["unwatched"] == before["unwatched"]  # not due before PLAN_POLL_SECONDS
    assert after["paid"] == before["paid"]
    assert after["unwatched"][0] - after["unwatched"][1] == timedelta(minutes=30)


async def test_marking_never_delays_and_writes_only_what_changes(
    pool: Pool, pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    await add_free(pg_uow, "watched", 1)
    sql(
        database_url,
        "UPDATE connection_maintenance SET synced_at = now(), sync_due = now() + interval '5 s'",
    )
    before = sync_due(database_url)
    watching = PostgresWatchedPolling(pool, WATCHED)
    assert await watching.mark(["watched"]) == 0  # already due sooner: left as it is
    assert sync_due(database_url) == before
    sql(database_url, "UPDATE connection_maintenance SET sync_due = now() + interval '1 hour'")
    assert await watching.mark(["watched"]) == 1
    assert await watching.mark(["watched"]) == 0  # the second tick writes nothing


async def test_one_statement_marks_many_users(
    pool: Pool, pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    users = [f"user{n}" for n in range(1, 41)]
    for n, user in enumerate(users, start=1):
        await add_free(pg_uow, user, n)
    synced_long_ago(database_url)

    assert await PostgresWatchedPolling(pool, WATCHED).mark(users) == 40

    # All 40 rows were written by one transaction, and the adapter sends one UPDATE in it.
    (rows,) = sql(
        database_url,
        "SELECT count(*), count(DISTINCT xmin::text),"
        " bool_and(sync_due = synced_at + interval '30 seconds') FROM connection_maintenance",
    )
    assert rows == (40, 1, True)


async def test_the_scope_sees_only_free_plan_connections_and_nothing_without_it(
    pool: Pool, pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    await add_free(pg_uow, "free", 1)
    await add(pg_uow, connection("paid", 2, cid(2)))
    synced_long_ago(database_url)
    async with pool.connection() as conn, conn.transaction():
        # Without the scope (and no tenant) the runtime role sees no connection: nothing marked.
        cursor = await conn.execute(MARK_WATCHED, {"users": ["free", "paid"], "every": WATCHED})
        assert cursor.rowcount == 0
        await conn.execute("SELECT set_config('app.scope', 'watching', true)")
        cursor = await conn.execute("SELECT user_id FROM calendar_connections")
        assert await cursor.fetchall() == [{"user_id": "free"}]
        await conn.execute("SELECT set_config('app.scope', 'host', true)")
        cursor = await conn.execute("SELECT count(*) AS n FROM calendar_connections")
        assert await cursor.fetchone() == {"n": 2}  # the host scope: unchanged


async def test_the_marking_follows_the_streams_and_stops_with_the_last(
    pool: Pool, pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    await add_free(pg_uow, "fred", 1)
    synced_long_ago(database_url)
    hub = LiveHub()
    watching = PostgresWatchedPolling(pool, WATCHED)
    marker = asyncio.create_task(mark_watched(hub, watching.mark, every=0.1, settle=0.02))

    def due_soon() -> bool:
        due, synced = sync_due(database_url)["fred"]
        return bool(due == synced + WATCHED)

    async def eventually(expected: bool) -> bool:
        for _ in range(100):
            if due_soon() is expected:
                return True
            await asyncio.sleep(0.02)
        return False

    try:
        first = hub.subscribe("fred")
        second = hub.subscribe("fred")
        hub.polled("fred", True)  # the stream read the connection: a free plan
        assert await eventually(True)
        # Synced since (the worker pushed it back 30 minutes): the next tick marks it again.
        synced_long_ago(database_url)
        hub.unsubscribe("fred", first)
        assert await eventually(True)
        # The last stream closes: no tick marks it any more.
        hub.unsubscribe("fred", second)
        synced_long_ago(database_url)
        await asyncio.sleep(0.5)  # five ticks
        assert not due_soon()
        assert hub.polled_users() == frozenset()
    finally:
        marker.cancel()
        await asyncio.gather(marker, return_exceptions=True)


async def test_a_watched_free_users_booking_arrives_at_the_next_pass(
    real: RealCore, workers: tuple[Worker, Worker], pool: Pool
) -> None:
    """End to end with the worker and the sandbox: the first pass syncs and schedules the next
    one PLAN_POLL_SECONDS later; 31 seconds on, a booking is missed until the user watches."""
    await connect_free(real, "fred-user", "fred@example.com")
    worker, _ = workers
    assert await worker.run_once() == 1
    ((due, synced),) = owner_sql(real, "SELECT sync_due, synced_at FROM connection_maintenance")
    assert isinstance(due, datetime)
    assert isinstance(synced, datetime)
    assert timedelta(minutes=27) <= due - synced <= timedelta(minutes=30)  # less up to a tenth
    # The page is told how fresh the data is: the status carries the last sync.
    status = await GetConnectionStatus(cast(UnitOfWorkFactory, real.uow))("fred-user")
    assert status.synced_at == synced
    owner_sql(real, "UPDATE connection_maintenance SET synced_at = synced_at - interval '31 s'")
    fred = await user_id_of(real, "fred@example.com")
    booked = await real.sandbox.book(fred, wait=True)
    assert await worker.run_once() == 0  # unwatched: not due
    await PostgresWatchedPolling(pool, WATCHED).mark(["fred-user"])
    assert await worker.run_once() == 1
    events = owner_sql(real, "SELECT event_uri FROM meetings")
    assert events == [(booked["event"]["uri"],)]


async def test_a_revoked_grant_shows_needs_reauth_after_the_page_opens(
    real: RealCore, workers: tuple[Worker, Worker], pool: Pool
) -> None:
    """Issue 15's promise: the user removed the app in Calendly while nothing was due; opening
    the page asks for a grant check at the worker's next claim, which finds it revoked."""
    await real.connect("paula", "paula@example.com")
    worker, _ = workers
    while await worker.run_once():  # whatever the connect left due
        pass
    owner_sql(real, "UPDATE connection_maintenance SET last_run_at = now() - interval '1 hour'")
    paula = await user_id_of(real, "paula@example.com")
    await real.sandbox.control("POST", f"/_sandbox/users/{paula}/revoke_app", expect=200)
    assert await worker.run_once() == 0  # nothing is due: unnoticed
    polling = PostgresWatchedPolling(pool, WATCHED)

    assert await polling.check_opened(["paula"]) == 1
    assert await polling.check_opened(["paula"]) == 0  # already due: one check
    assert await worker.run_once() == 1

    status = await GetConnectionStatus(cast(UnitOfWorkFactory, real.uow))("paula")
    assert status.status.value == "needs_reauth"
    # The worker handled it just now: another page opening asks for nothing more for a while.
    owner_sql(real, "UPDATE connection_maintenance SET subscription_due = now() + interval '1 day'")
    assert await polling.check_opened(["paula"]) == 0
