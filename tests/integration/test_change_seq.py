"""Live-update cursors are per user on Postgres: gap-free under concurrency, kept by 0005, never
given twice since 0016."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from adapters.crypto import AesGcmTokenCipher
from adapters.postgres.migrations import migrate
from adapters.postgres.pool import make_pool
from adapters.postgres.unit_of_work import unit_of_work_factory
from domain.meetings import Meeting
from domain.model import Connection
from domain.ports import MeetingChange, UnitOfWorkFactory
from tests.support.connections import CID_A, CID_B, EV, add, connection, owner_sql
from tests.support.postgres import RUNTIME_ROLE, PgCluster, database_before

PER_USER = "0005_per_user_change_seq.sql"


async def seqs(uow_factory: UnitOfWorkFactory, user_id: str) -> list[int]:
    async with uow_factory(user_id) as uow:
        views = await uow.meetings.changed_since(user_id, 0, 1000)
    return sorted(v.change_seq for v in views)


async def test_concurrent_changes_of_two_users_number_each_users_from_one_without_gaps(
    pg_uow: UnitOfWorkFactory,
) -> None:
    a = await add(pg_uow, connection("a", 1, CID_A))
    b = await add(pg_uow, connection("b", 2, CID_B))

    async def change(owner: Connection, event: str) -> None:
        async with pg_uow(owner.user_id) as uow:
            await uow.meetings.apply(owner, MeetingChange(meeting=Meeting(event_uri=EV + event)))
            await uow.commit()

    # More writers than pooled connections (4): they queue on the per-user lock and the pool.
    await asyncio.gather(*(change(owner, f"e{n}") for n in range(12) for owner in (a, b)))

    assert await seqs(pg_uow, "a") == list(range(1, 13))
    assert await seqs(pg_uow, "b") == list(range(1, 13))


async def test_a_row_written_without_a_number_is_numbered_by_the_trigger(
    pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    """The service's statement numbers its rows itself (DR-52); any other writer that leaves
    the number out (a process on the previous code, a hand-written INSERT) still gets the next
    one, from the same counter, by the trigger that 0016 keeps for them."""
    a = await add(pg_uow, connection("a", 1, CID_A))
    async with pg_uow("a") as uow:
        for event in ("e1", "e2"):
            await uow.meetings.apply(a, MeetingChange(meeting=Meeting(event_uri=EV + event)))
        await uow.commit()
    owner_sql(
        database_url,
        "INSERT INTO meetings (user_id, connection_id, event_uri, status)"
        " VALUES ('a', %s, %s, 'active')",
        CID_A,
        EV + "by-hand",
    )
    async with pg_uow("a") as uow:
        await uow.meetings.apply(a, MeetingChange(meeting=Meeting(event_uri=EV + "e3")))
        await uow.commit()

    assert await seqs(pg_uow, "a") == [1, 2, 3, 4]


async def test_a_number_is_never_given_twice_once_the_newest_meetings_are_gone(
    pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    """Numbers come from the user's counter, not from the meetings still stored: after the
    newest (or all) of a user's meetings are deleted (pruned, erased), the next change is still
    numbered above every number a page may hold as its cursor."""
    a = await add(pg_uow, connection("a", 1, CID_A))
    async with pg_uow("a") as uow:
        for event in ("e1", "e2", "e3"):
            await uow.meetings.apply(a, MeetingChange(meeting=Meeting(event_uri=EV + event)))
        await uow.commit()
    owner_sql(database_url, "DELETE FROM meetings WHERE user_id = 'a'")
    async with pg_uow("a") as uow:
        await uow.meetings.apply(a, MeetingChange(meeting=Meeting(event_uri=EV + "e4")))
        await uow.commit()

    assert await seqs(pg_uow, "a") == [4]


@pytest.fixture
async def before_per_user(pg_cluster: PgCluster, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database migrated up to (not including) 0005, as deployments were before it."""
    async for url in database_before(pg_cluster, tmp_path, PER_USER):
        yield url


async def test_the_migration_keeps_existing_cursors_and_continues_per_user(
    before_per_user: str, cipher: AesGcmTokenCipher
) -> None:
    url = before_per_user
    with psycopg.connect(url, autocommit=True) as admin:
        for user_id, cid in (("a", CID_A), ("b", CID_B)):
            admin.execute(
                "INSERT INTO calendar_connections (id, user_id, status, webhook_token)"
                " VALUES (%s, %s, 'disconnected', %s)",
                (cid, user_id, f"token-{user_id}"),
            )
        # Global sequence values, interleaved between the users as they were handed out.
        for user_id, cid, event, seq in (
            ("a", CID_A, "a1", 5),
            ("b", CID_B, "b1", 6),
            ("a", CID_A, "a2", 9),
            ("b", CID_B, "b2", 12),
        ):
            admin.execute(
                "INSERT INTO meetings (user_id, connection_id, event_uri, status, change_seq)"
                " VALUES (%s, %s, %s, 'active', %s)",
                (user_id, cid, EV + event, seq),
            )

    applied = [m.path.name for m in await migrate(url, RUNTIME_ROLE)]
    assert applied[0] == PER_USER  # and any later migration after it

    pool = make_pool(url, runtime_role=RUNTIME_ROLE, min_size=1, max_size=2)
    await pool.open(wait=True)
    try:
        uow = unit_of_work_factory(pool, cipher)
        assert await seqs(uow, "a") == [5, 9]  # existing values stay: cursors still resume
        a, b = connection("a", 1, CID_A), connection("b", 2, CID_B)
        for owner, event in ((a, "a1"), (b, "b3"), (a, "a3")):
            async with uow(owner.user_id) as work:
                await work.meetings.apply(
                    owner, MeetingChange(meeting=Meeting(event_uri=EV + event))
                )
                await work.commit()
        assert await seqs(uow, "a") == [9, 10, 11]
        assert await seqs(uow, "b") == [6, 12, 13]
    finally:
        await pool.close()
