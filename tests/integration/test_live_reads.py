"""Live updates' batched reads on Postgres (issue 17): many users' reads in one round trip give
each caller exactly what its own unit of work would have read, under its own tenant."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg_pool

from adapters.crypto import AesGcmTokenCipher
from adapters.postgres.live_reads import PostgresChangeReader
from adapters.postgres.pool import make_pool
from adapters.postgres.unit_of_work import unit_of_work_factory
from domain.errors import StorageUnavailable
from domain.meetings import Invitee, Meeting
from domain.ports import MeetingChange
from domain.usecases.queries import UnitOfWorkChangeReader
from tests.support.connections import EV, add, cid, connection

Pool = psycopg_pool.AsyncConnectionPool[Any]
USERS = ("ada", "bob", "cy")


async def test_batched_reads_answer_each_user_as_its_own_unit_of_work_would(pool: Pool) -> None:
    uow = unit_of_work_factory(pool, AesGcmTokenCipher({"k1": os.urandom(32)}, "k1"))
    for n, user in enumerate(USERS, start=1):
        stored = await add(uow, connection(user, n, cid(n)))
        for m in range(n * 2):  # ada 2 meetings, bob 4, cy 6
            uri = f"{EV}{user}-{m}"
            async with uow(user) as unit:
                await unit.meetings.apply(
                    stored,
                    MeetingChange(
                        meeting=Meeting(event_uri=uri, name=f"{user} {m}"),
                        invitee=Invitee(invitee_uri=f"{uri}/invitees/1", event_uri=uri),
                    ),
                )
                await unit.commit()
    batched = PostgresChangeReader(pool, max_running=1)
    reference = UnitOfWorkChangeReader(uow)
    asks = [
        (user, after, limit)
        for user in (*USERS, "nobody")
        for after in (None, 0, 2)
        for limit in (1, 100)
    ]

    async def ask(reader: Any, user: str, after: int | None, limit: int) -> Any:
        if after is None:
            return await reader.latest(user)
        return [(v.meeting.event_uri, v.change_seq) for v in await reader.since(user, after, limit)]

    got = await asyncio.gather(*(ask(batched, *a) for a in asks))
    want = [await ask(reference, *a) for a in asks]
    assert got == want
    assert batched.reads.batches == 1  # every read in one round trip
    latest = {a[0]: g for a, g in zip(asks, got, strict=True) if a[1] is None}
    assert latest == {"ada": 2, "bob": 4, "cy": 6, "nobody": 0}
    for (user, after, _), answer in zip(asks, got, strict=True):
        if after is not None:
            assert all(uri.startswith(f"{EV}{user}-") for uri, _ in answer)  # RLS held


async def test_an_unreachable_database_answers_every_read_storage_unavailable() -> None:
    pool = make_pool("postgresql://nobody@127.0.0.1:9/none", runtime_role=None, min_size=0)
    await pool.open(wait=False)
    try:
        reader = PostgresChangeReader(pool)
        answers = await asyncio.gather(
            reader.latest("ada"), reader.since("bob", 0, 10), return_exceptions=True
        )
        assert all(isinstance(a, StorageUnavailable) for a in answers), answers
    finally:
        await pool.close()
