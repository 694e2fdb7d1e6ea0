"""Row-level security, the runtime role, the pool and migrations, proved on real Postgres."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg_pool
import pytest

from adapters.crypto import AesGcmTokenCipher
from adapters.postgres.migrations import discover, migrate, pending
from adapters.postgres.pool import make_pool
from adapters.postgres.roles import (
    BATCH_WRITER_ROLE,
    UnsafeDatabaseRole,
    batch_writer_trouble,
    check_runtime_role,
)
from adapters.postgres.unit_of_work import unit_of_work_factory
from domain.meetings import Meeting
from domain.ports import MeetingChange, UnitOfWorkFactory
from tests.support.connections import CID_A, CID_B, add, connection, owner_sql
from tests.support.postgres import RUNTIME_ROLE, PgCluster

Pool = psycopg_pool.AsyncConnectionPool[Any]
T0 = datetime(2030, 1, 1, tzinfo=UTC)
EV = "https://api.calendly.test/scheduled_events/"


async def seed_two_tenants(pg_uow: UnitOfWorkFactory) -> None:
    a = await add(pg_uow, connection("a", 1, CID_A))
    b = await add(pg_uow, connection("b", 2, CID_B))
    for c in (a, b):
        async with pg_uow(c.user_id) as uow:
            await uow.meetings.apply(
                c, MeetingChange(meeting=Meeting(event_uri=f"{EV}{c.user_id}"))
            )
            await uow.commit()


async def runtime_query(pool: Pool, tenant: str | None, query: str) -> list[Any]:
    """Run SQL as the service's role, inside a tenant, as a query that forgot its filter."""
    async with pool.connection() as conn:
        if tenant is not None:
            await conn.execute("SELECT set_config('app.user_id', %s, true)", (tenant,))
        cursor = await conn.execute(query)
        rows = await cursor.fetchall() if cursor.description else []
        await conn.rollback()
        return rows


@pytest.mark.parametrize(
    "table", ["calendar_connections", "meetings", "meeting_invitees", "calendly_webhook_events"]
)
async def test_a_query_without_its_filter_sees_only_the_tenants_rows(
    pool: Pool, pg_uow: UnitOfWorkFactory, table: str
) -> None:
    await seed_two_tenants(pg_uow)
    rows_a = await runtime_query(pool, "a", f"SELECT user_id FROM {table}")  # noqa: S608
    rows_none = await runtime_query(pool, None, f"SELECT user_id FROM {table}")  # noqa: S608
    assert {r["user_id"] for r in rows_a} <= {"a"}
    assert rows_none == []
    if table in ("calendar_connections", "meetings"):
        assert rows_a  # the tenant does see its own


async def test_another_tenants_rows_cannot_be_changed_or_claimed(
    pool: Pool, pg_uow: UnitOfWorkFactory
) -> None:
    await seed_two_tenants(pg_uow)
    async with pool.connection() as conn:
        await conn.execute("SELECT set_config('app.user_id', 'b', true)")
        cursor = await conn.execute("UPDATE meetings SET name = 'pwned' WHERE user_id = 'a'")
        assert cursor.rowcount == 0
        cursor = await conn.execute("DELETE FROM calendar_connections WHERE user_id = 'a'")
        assert cursor.rowcount == 0
        # With its number given, meetings' own policy refuses it (without one, the numbering
        # trigger's counter, under the same tenant rule, would refuse it first: DR-52).
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match='"meetings"'):
            await conn.execute(
                "INSERT INTO meetings (user_id, connection_id, event_uri, status, change_seq)"
                " VALUES ('a', %s, 'x', 'active', 1)",
                (CID_A,),
            )
        await conn.rollback()


async def test_the_tenant_setting_does_not_leak_through_the_pool(
    database_url: str, cipher: AesGcmTokenCipher
) -> None:
    pool = make_pool(database_url, runtime_role=RUNTIME_ROLE, min_size=1, max_size=1)
    await pool.open(wait=True)
    try:
        uow_factory = unit_of_work_factory(pool, cipher)
        await add(uow_factory, connection("a", 1, CID_A))
        async with uow_factory("a") as uow:
            assert await uow.connections.get("a") is not None
        rows = await runtime_query(pool, None, "SELECT current_setting('app.user_id', true) AS t")
        assert rows[0]["t"] in (None, "")
        assert await runtime_query(pool, None, "SELECT id FROM calendar_connections") == []
    finally:
        await pool.close()


async def test_the_runtime_role_is_bound_by_rls(pool: Pool) -> None:
    assert await check_runtime_role(pool) == RUNTIME_ROLE


async def test_the_service_refuses_a_role_that_bypasses_rls(database_url: str) -> None:
    owner_pool = make_pool(database_url, runtime_role=None, min_size=1, max_size=1)
    await owner_pool.open(wait=True)
    try:
        with pytest.raises(UnsafeDatabaseRole, match=r"superuser|owns"):
            await check_runtime_role(owner_pool)
    finally:
        await owner_pool.close()


async def test_the_service_refuses_a_batch_writer_that_bypasses_rls(
    pool: Pool, database_url: str
) -> None:
    """The batch writer (migrations/0019, DR-61) found with BYPASSRLS (made so by hand: the
    migration keeps a role it finds) would write any user's rows: the service refuses it."""
    owner_sql(database_url, f"ALTER ROLE {BATCH_WRITER_ROLE} BYPASSRLS")
    try:
        with pytest.raises(UnsafeDatabaseRole, match=BATCH_WRITER_ROLE):
            await check_runtime_role(pool)
    finally:
        owner_sql(database_url, f"ALTER ROLE {BATCH_WRITER_ROLE} NOBYPASSRLS")
    assert await check_runtime_role(pool) == RUNTIME_ROLE


async def test_a_batch_writer_without_its_policies_is_made_whole_by_migrating_again(
    pool: Pool, database_url: str
) -> None:
    """Without its policies the batch writer is not used (the service writes one statement
    per delivery, DR-61); `migrate` makes what is missing again, and says what it could not."""
    assert await batch_writer_trouble(pool) is None
    owner_sql(database_url, "DROP POLICY batch_users ON meetings")
    assert "policies" in (await batch_writer_trouble(pool) or "")
    warnings: list[str] = []
    await migrate(database_url, RUNTIME_ROLE, warn=warnings.append)
    assert warnings == []
    assert await batch_writer_trouble(pool) is None


async def test_migrating_again_applies_nothing(database_url: str) -> None:
    assert await migrate(database_url, RUNTIME_ROLE) == []
    assert await pending(database_url) == []


async def test_two_processes_migrating_at_once_apply_each_file_once(
    pg_cluster: PgCluster,
) -> None:
    name = "cc_fresh_migrate"
    pg_cluster.drop(name)
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg_cluster.url_for(name)
    try:
        every = discover()
        assert await pending(url) == every
        results = await asyncio.gather(*(migrate(url, RUNTIME_ROLE) for _ in range(3)))
        assert sorted(len(r) for r in results) == [0, 0, len(every)]
        with psycopg.connect(url) as conn:
            count = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
        assert count == (len(every),)
    finally:
        pg_cluster.drop(name)


async def test_a_database_outage_is_storage_unavailable(
    database_url: str, cipher: AesGcmTokenCipher
) -> None:
    from domain.errors import StorageUnavailable

    pool = make_pool(database_url, runtime_role=RUNTIME_ROLE, min_size=1, max_size=1)
    await pool.open(wait=True)
    try:
        uow_factory = unit_of_work_factory(pool, cipher)
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT pg_backend_pid() AS pid")
            row = await cursor.fetchone()
            assert row is not None
            pid = row["pid"]
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StorageUnavailable):
            async with uow_factory("a") as uow:
                await uow.connections.get("a")
        async with uow_factory("a") as uow:  # the pool replaced the broken connection
            assert await uow.connections.get("a") is None
    finally:
        await pool.close()
