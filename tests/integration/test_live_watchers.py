"""A meeting's doorbell rings only while some process listens for its user (DR-57, migrations
/0018), on a real Postgres as the runtime role: a registration waits for a meeting write under
way (the user's lock) and every write after it rings; nobody listening, nothing rings; '*'
hears everyone; forgetting and purging remove only what they should."""

from __future__ import annotations

import asyncio

import psycopg

from adapters.postgres.watching import EVERYONE, PostgresLiveWatchers
from domain.meetings import Meeting
from domain.model import Connection
from domain.ports import MeetingChange, UnitOfWorkFactory
from tests.integration.conftest import Pool
from tests.support.connections import CID_A, CID_B, EV, add, connection, owner_sql

PAUSE = 0.4  # longer than the registration's lock timeout: its fallback waits too


async def doorbells(database_url: str) -> psycopg.AsyncConnection[object]:
    listener = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    await listener.execute("LISTEN calendly_changes")
    return listener


async def heard(listener: psycopg.AsyncConnection[object]) -> list[str]:
    return [n.payload async for n in listener.notifies(timeout=0.3)]


async def book(uow: UnitOfWorkFactory, stored: Connection, uri: str) -> None:
    async with uow(stored.user_id) as tx:
        await tx.meetings.apply(stored, MeetingChange(meeting=Meeting(event_uri=EV + uri)))
        await tx.commit()


async def test_nobody_listening_nothing_rings_and_a_registered_user_rings_for_every_process(
    pg_uow: UnitOfWorkFactory, pool: Pool, database_url: str
) -> None:
    ada = await add(pg_uow, connection("ada", 1, CID_A))
    bob = await add(pg_uow, connection("bob", 2, CID_B))
    listener = await doorbells(database_url)
    try:
        await book(pg_uow, ada, "a1")
        assert await heard(listener) == []
        one, two = PostgresLiveWatchers(pool, "one"), PostgresLiveWatchers(pool, "two")
        assert await one.register(["ada"]) == {"ada"}
        assert await one.register(["ada"]) == set()  # a refresh: nothing new
        assert await two.register(["ada"]) == {"ada"}
        await book(pg_uow, ada, "a2")
        await book(pg_uow, bob, "b1")
        assert await heard(listener) == ["meetings:ada"]  # one doorbell, any process hears it
        await one.forget(["ada"])
        await book(pg_uow, ada, "a3")
        assert await heard(listener) == ["meetings:ada"]  # "two" still listens
        await two.forget(["ada"])
        await book(pg_uow, ada, "a4")
        assert await heard(listener) == []
        everyone = PostgresLiveWatchers(pool, "dispatcher")
        assert await everyone.register([EVERYONE]) == {EVERYONE}
        await book(pg_uow, ada, "a5")
        await book(pg_uow, bob, "b2")
        assert await heard(listener) == ["meetings:ada", "meetings:bob"]
    finally:
        await listener.close()


async def test_a_registration_waits_for_a_write_under_way_and_every_write_after_it_rings(
    pg_uow: UnitOfWorkFactory, pool: Pool, database_url: str
) -> None:
    """The order that makes the doorbell safe to skip: a write that took the user's lock
    before the registration commits before it (so the stream's first read, after the
    registration, sees it); a write after the registration sees its row and rings."""
    ada = await add(pg_uow, connection("ada", 1, CID_A))
    watchers = PostgresLiveWatchers(pool, "one")
    listener = await doorbells(database_url)
    try:
        async with pg_uow("ada") as tx:
            await tx.meetings.apply(ada, MeetingChange(meeting=Meeting(event_uri=EV + "1")))
            registering = asyncio.create_task(watchers.register(["ada", "bob"]))
            await asyncio.sleep(PAUSE)
            assert not registering.done()  # it waits for the write's commit
            await tx.commit()
        assert await asyncio.wait_for(registering, 10) == {"ada", "bob"}
        assert await heard(listener) == []  # that write's trigger ran before anyone listened
        await book(pg_uow, ada, "2")
        assert await heard(listener) == ["meetings:ada"]
    finally:
        await listener.close()


async def test_purging_removes_only_the_rows_not_refreshed_for_a_while(
    pool: Pool, database_url: str
) -> None:
    dead, alive = PostgresLiveWatchers(pool, "dead"), PostgresLiveWatchers(pool, "alive")
    await dead.register(["ada", "bob"])
    await alive.register(["ada"])
    owner_sql(
        database_url,
        "UPDATE live_watchers SET seen_at = now() - interval '11 minutes' WHERE process = 'dead'",
    )
    assert await alive.purge() == 2
    rows = owner_sql(database_url, "SELECT user_id, process FROM live_watchers")
    assert rows == [("ada", "alive")]
    assert await dead.register(["ada"]) == {"ada"}  # come back: registered again, and told
