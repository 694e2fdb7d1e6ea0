"""The webhook path rings a meeting's doorbell only while some process listens for its user
(DR-57, migrations/0018), on a real Postgres as the runtime role: a batch rings for its users
that are listened for (or all, while some process listens for everyone) and for no one else;
other writers ring as before; a registration waits for a write under way (the user's lock),
and a batch after it rings; forgetting and purging remove only what they should."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from adapters.crypto import AesGcmTokenCipher
from adapters.postgres.group_commit import PostgresDeliveryLedger
from adapters.postgres.unit_of_work import unit_of_work_factory
from adapters.postgres.watching import EVERYONE, PostgresLiveWatchers
from domain.errors import StorageUnavailable
from domain.meetings import Meeting
from domain.ports import MeetingChange, UnitOfWorkFactory
from domain.usecases.handle_webhook_event import UnitOfWorkLedger
from entrypoints.service.host_webhooks import hear_every_doorbell
from tests.integration.conftest import Pool
from tests.support.connections import EV, owner_sql
from tests.support.ledger_records import connected, delivery

PAUSE = 0.4  # longer than the registration's lock timeout: its fallback waits too


@pytest.fixture
async def ledger(pool: Pool, cipher: AesGcmTokenCipher) -> PostgresDeliveryLedger:
    await connected(unit_of_work_factory(pool, cipher))
    return PostgresDeliveryLedger(
        pool, cipher, UnitOfWorkLedger(unit_of_work_factory(pool, cipher)), max_running=1
    )


@pytest.fixture
async def listener(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[object]]:
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    await conn.execute("LISTEN calendly_changes")
    yield conn
    await conn.close()


async def heard(listener: psycopg.AsyncConnection[object]) -> list[str]:
    return sorted([n.payload async for n in listener.notifies(timeout=0.3)])


def rows(database_url: str) -> list[tuple[object, ...]]:
    return sorted(owner_sql(database_url, "SELECT user_id, process FROM live_watchers"))


async def batch(ledger: PostgresDeliveryLedger, *bookings: tuple[str, int]) -> None:
    answers = await asyncio.gather(*(ledger.record(delivery(u, n, 0)) for u, n in bookings))
    assert all(answers)


async def test_a_batch_rings_only_for_the_users_someone_listens_for(
    ledger: PostgresDeliveryLedger,
    pool: Pool,
    pg_uow: UnitOfWorkFactory,
    listener: psycopg.AsyncConnection[object],
    database_url: str,
) -> None:
    await batch(ledger, ("ada", 1), ("bob", 1))
    assert await heard(listener) == []  # nobody listening
    one, two = PostgresLiveWatchers(pool, "one"), PostgresLiveWatchers(pool, "two")
    await one.add(["ada"])
    await one.add(["ada"])  # again: the same row, refreshed
    await two.add(["ada"])
    assert rows(database_url) == [("ada", "one"), ("ada", "two")]
    await batch(ledger, ("ada", 2), ("bob", 2), ("cy", 2))
    assert await heard(listener) == ["meetings:ada"]  # one doorbell: every process hears it
    await one.forget(["ada"])
    await batch(ledger, ("ada", 3))
    assert await heard(listener) == ["meetings:ada"]  # "two" still listens
    await two.forget(["ada"])
    await batch(ledger, ("ada", 4))
    assert await heard(listener) == []
    everyone = PostgresLiveWatchers(pool, "dispatcher")
    await everyone.add([EVERYONE])
    await batch(ledger, ("ada", 5), ("bob", 5))
    assert await heard(listener) == ["meetings:ada", "meetings:bob"]
    await everyone.forget([EVERYONE])
    # Any other writer rings whoever listens, as before 0018.
    async with pg_uow("cy") as uow:
        stored = await uow.connections.get("cy")
        assert stored is not None
        await uow.meetings.apply(stored, MeetingChange(meeting=Meeting(event_uri=EV + "cy-9")))
        await uow.commit()
    assert await heard(listener) == ["meetings:cy"]


async def test_a_registration_waits_for_a_write_under_way_and_a_batch_after_it_rings(
    ledger: PostgresDeliveryLedger,
    pool: Pool,
    pg_uow: UnitOfWorkFactory,
    listener: psycopg.AsyncConnection[object],
) -> None:
    """The order that makes the doorbell safe to skip: the row committed, a write that held
    the user's lock then has committed before the registration ends (so the stream's first
    read sees it); a batch that takes the lock after rings, from its own statement."""
    watchers = PostgresLiveWatchers(pool, "one")
    async with pg_uow("ada") as uow:
        stored = await uow.connections.get("ada")
        assert stored is not None
        await uow.meetings.apply(stored, MeetingChange(meeting=Meeting(event_uri=EV + "w")))
        await watchers.add(["ada", "bob"])  # no lock: at once
        assert await watchers.refresh(["ada", "bob"]) == set()  # both rows there
        assert await watchers.busy(["ada", "bob"]) == {"ada"}  # bob is registered now
        waiting = asyncio.create_task(watchers.wait_for_writes("ada"))
        await asyncio.sleep(PAUSE)
        assert not waiting.done()  # ada's registration ends with the write under way
        booking = asyncio.create_task(batch(ledger, ("ada", 1)))  # queued behind it
        await asyncio.sleep(0.05)
        await uow.commit()
    await asyncio.wait_for(waiting, 10)
    await asyncio.wait_for(booking, 10)
    assert ledger.fallbacks == 0  # rung by the batch's statement, not by a write alone
    assert await heard(listener) == ["meetings:ada", "meetings:ada"]  # the write's, the batch's
    assert await watchers.busy(["ada"]) == set()


@pytest.mark.usefixtures("ledger")  # the users connected
async def test_a_registration_gives_up_on_a_write_that_does_not_end(
    pool: Pool, pg_uow: UnitOfWorkFactory
) -> None:
    watchers = PostgresLiveWatchers(pool, "one")
    async with pg_uow("ada") as uow:
        stored = await uow.connections.get("ada")
        assert stored is not None
        await uow.meetings.apply(stored, MeetingChange(meeting=Meeting(event_uri=EV + "w")))
        with pytest.raises(StorageUnavailable):
            await watchers.wait_for_writes("ada", seconds=0.2)


async def test_purging_removes_only_the_rows_not_refreshed_for_a_while(
    pool: Pool, database_url: str
) -> None:
    dead, alive = PostgresLiveWatchers(pool, "dead"), PostgresLiveWatchers(pool, "alive")
    await dead.add(["ada", "bob"])
    await alive.add(["ada"])
    owner_sql(
        database_url,
        "UPDATE live_watchers SET seen_at = now() - interval '11 minutes' WHERE process = 'dead'",
    )
    assert await alive.purge() == 2
    assert rows(database_url) == [("ada", "alive")]
    assert await alive.refresh(["ada"]) == set()
    assert await dead.refresh(["ada", "bob"]) == {"ada", "bob"}  # back: lost, to register again
    await dead.add(["ada"])
    assert await dead.refresh(["ada", "bob"]) == {"bob"}


async def test_a_host_webhooks_dispatcher_listens_for_everyone_while_it_runs(
    pool: Pool, database_url: str
) -> None:
    """Its row '*' is made at once and refreshed while it runs (else it would be purged)."""

    async def row_once_it_changes(before: object) -> tuple[object, ...]:
        for _ in range(200):
            rows = owner_sql(database_url, "SELECT user_id, process, seen_at FROM live_watchers")
            if rows and rows[0] != before:
                assert len(rows) == 1
                return rows[0]
            await asyncio.sleep(0.02)
        raise AssertionError("no row, or not refreshed")

    hearing = asyncio.create_task(
        hear_every_doorbell(PostgresLiveWatchers(pool, "dispatcher"), every=0.1)
    )
    try:
        first = await row_once_it_changes(None)
        assert first[:2] == ("*", "dispatcher")
        assert (await row_once_it_changes(first))[:2] == ("*", "dispatcher")
    finally:
        hearing.cancel()
        await asyncio.gather(hearing, return_exceptions=True)


async def test_after_a_batch_the_same_connections_other_writes_ring_as_before(
    ledger: PostgresDeliveryLedger, database_url: str, listener: psycopg.AsyncConnection[object]
) -> None:
    """The batch's setting lasts its transaction only: a pooled connection's next writer
    (the setting now '' rather than unset) rings as every other writer does."""
    await batch(ledger, ("cy", 1))
    assert await heard(listener) == []  # nobody listens
    with psycopg.connect(database_url) as conn:  # one connection for both transactions
        conn.execute("SELECT set_config('app.doorbells', 'batch', true)")
        conn.execute("UPDATE meetings SET name = 'silent' WHERE user_id = 'cy'")
        conn.commit()
        assert conn.execute("SELECT current_setting('app.doorbells', true)").fetchone() == ("",)
        conn.execute("UPDATE meetings SET name = 'heard' WHERE user_id = 'cy'")
        conn.commit()
    assert await heard(listener) == ["meetings:cy"]
