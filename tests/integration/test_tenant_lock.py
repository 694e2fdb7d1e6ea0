"""A tenant's writers take the tenant's lock before any row lock (DR-33), through the real unit
of work on Postgres: a disconnect racing a delivery's new meeting does not deadlock, and one
user's changes get their feed positions in the order their `user_seq` says."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg_pool

from adapters.postgres.changes import PostgresChangeFeed
from domain.meetings import Meeting
from domain.ports import MeetingChange, UnitOfWorkFactory
from tests.support.connections import CID_A, EV, T0, add, connection

PAUSE = 0.4
Pool = psycopg_pool.AsyncConnectionPool[Any]


async def test_a_disconnect_and_a_new_meeting_of_the_same_user_do_not_deadlock(
    pg_uow: UnitOfWorkFactory,
) -> None:
    stored = await add(pg_uow, connection("u", 1, CID_A))
    locked = asyncio.Event()

    async def disconnect() -> None:
        async with pg_uow("u") as uow:
            current = await uow.connections.get("u", for_update=True)  # the row lock first
            assert current is not None
            locked.set()
            await asyncio.sleep(PAUSE)  # as a revoke call at Calendly takes a while
            await uow.connections.save(current.disconnected(T0 + timedelta(minutes=1)))
            await uow.commit()

    async def new_meeting() -> None:
        await locked.wait()
        async with pg_uow("u") as uow:
            # The upsert's own lock, then the connection row's key (the foreign key).
            await uow.meetings.apply(stored, MeetingChange(meeting=Meeting(event_uri=EV + "n")))
            await uow.commit()

    # Before DR-33 one of them failed with DeadlockDetected (a StorageUnavailable here).
    await asyncio.wait_for(asyncio.gather(disconnect(), new_meeting()), timeout=10)
    async with pg_uow("u") as uow:
        assert [m.meeting.event_uri for m in await uow.meetings.changed_since("u", 0, 10)] == [
            EV + "n"
        ]


async def test_one_users_changes_are_in_the_feed_in_user_seq_order(
    pg_uow: UnitOfWorkFactory, pool: Pool
) -> None:
    stored = await add(pg_uow, connection("u", 1, CID_A))
    first_wrote = asyncio.Event()

    async def earlier() -> None:
        async with pg_uow("u") as uow:
            # A delivery is recorded first (the transaction's first write) ...
            await uow.webhook_events.record(
                event_id="first",
                event_type="invitee.created",
                payload=b"{}",
                connection=stored,
                outcome="applied",
            )
            first_wrote.set()
            await asyncio.sleep(PAUSE)
            # ... and its meeting written later.
            await uow.meetings.apply(stored, MeetingChange(meeting=Meeting(event_uri=EV + "1")))
            await uow.commit()

    async def later() -> None:
        await first_wrote.wait()
        async with pg_uow("u") as uow:
            await uow.meetings.apply(stored, MeetingChange(meeting=Meeting(event_uri=EV + "2")))
            await uow.commit()

    await asyncio.gather(earlier(), later())
    changes = [c for c in await PostgresChangeFeed(pool).read(None, 100) if c.kind == "meeting"]
    # Without the lock before the first write, the later transaction took its number second
    # but sat first in the feed: user_seq 3 before 2.
    assert [c.user_seq for c in changes] == sorted(c.user_seq for c in changes)
    assert [c.meeting.meeting.event_uri for c in changes if c.meeting] == [EV + "1", EV + "2"]
