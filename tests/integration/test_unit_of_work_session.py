"""The unit of work's Session (DR-19, DR-20): BEGIN and the tenant ride with the next statement,
and a transaction that wrote nothing ends with COMMIT so psycopg keeps its prepared statements.
"""

from __future__ import annotations

from typing import Any

import psycopg_pool

from adapters.crypto import AesGcmTokenCipher
from adapters.postgres.unit_of_work import PostgresUnitOfWork
from domain.ports import MeetingQuery, UnitOfWorkFactory
from tests.support.connections import CID_A, account, add, connection

Pool = psycopg_pool.AsyncConnectionPool[Any]


async def test_the_tenant_is_in_force_for_the_first_statement(pg_uow: UnitOfWorkFactory) -> None:
    await add(pg_uow, connection("a", 1, CID_A))
    async with pg_uow("a") as uow:
        assert await uow.connections.get("a") is not None
    async with pg_uow() as uow:
        assert await uow.connections.get("a") is None  # no tenant: row-level security hides it
        await uow.act_as("a")
        assert await uow.connections.get("a") is not None
        await uow.act_as("b")
        assert await uow.connections.get("a") is None


async def test_reads_and_a_repeated_delivery_count_as_writing_nothing(
    pool: Pool, cipher: AesGcmTokenCipher, pg_uow: UnitOfWorkFactory
) -> None:
    await add(pg_uow, connection("a", 1, CID_A))

    async def record(uow: PostgresUnitOfWork) -> bool:
        # Unrouted: the plain INSERT ... ON CONFLICT DO NOTHING (a routed delivery's statement
        # checks its route in a CTE, and so counts as a write whatever it does).
        return await uow.webhook_events.record(
            event_id="unrouted:invitee.created:x",
            event_type="invitee.created",
            payload=b"{}",
            connection=None,
            outcome="unusable",
        )

    async with PostgresUnitOfWork(pool, cipher, "a") as uow:
        await uow.connections.get("a")
        await uow.meetings.list("a", MeetingQuery())
        assert not uow.conn.wrote
    async with PostgresUnitOfWork(pool, cipher, None) as uow:
        assert await record(uow)
        assert uow.conn.wrote
        await uow.commit()
    async with PostgresUnitOfWork(pool, cipher, None) as uow:
        assert not await record(uow)  # the duplicate inserts nothing
        assert not uow.conn.wrote


async def test_route_lookups_count_as_writing_nothing(
    pool: Pool, cipher: AesGcmTokenCipher, pg_uow: UnitOfWorkFactory
) -> None:
    await add(pg_uow, connection("a", 1, CID_A))
    async with PostgresUnitOfWork(pool, cipher, None) as uow:
        assert await uow.routes.find(webhook_token="token-a1") is not None
        assert await uow.routes.find(calendly_user_uris=[account(1).user_uri]) is not None
        assert await uow.routes.users_without_account() == []
        assert not uow.conn.wrote


async def test_leaving_without_commit_still_keeps_nothing_written(
    pool: Pool, cipher: AesGcmTokenCipher, pg_uow: UnitOfWorkFactory
) -> None:
    async with PostgresUnitOfWork(pool, cipher, "a") as uow:
        await uow.connections.add(connection("a", 1, CID_A))
        assert uow.conn.wrote
    async with pg_uow("a") as uow:
        assert await uow.connections.get("a") is None
