"""The server API's storage on real Postgres: API keys, the host's read across tenants (DR-30)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import psycopg_pool
import pytest

from adapters.postgres.api_keys import PostgresApiKeyStore
from adapters.postgres.directory import PostgresConnectionDirectory
from adapters.postgres.pool import make_pool
from adapters.system import SecretsRandomness, SystemClock
from domain.api_keys import ApiKeyScope, digest
from domain.meetings import Meeting
from domain.model import ConnectionStatus
from domain.ports import ConnectionListQuery, MeetingChange, UnitOfWorkFactory
from domain.usecases.api_keys import CreateApiKey, NewApiKey
from tests.support.connections import EV, T0, add, connection
from tests.support.postgres import RUNTIME_ROLE

Pool = psycopg_pool.AsyncConnectionPool[Any]
T1 = datetime(2031, 1, 1, tzinfo=UTC)


async def as_runtime(
    pool: Pool, query: str, *, tenant: str | None = None, scope: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Run SQL as the service's role with the given settings, rolled back: (rows, rowcount)."""
    async with pool.connection() as conn:
        if tenant is not None:
            await conn.execute("SELECT set_config('app.user_id', %s, true)", (tenant,))
        if scope is not None:
            await conn.execute("SELECT set_config('app.scope', %s, true)", (scope,))
        cursor = await conn.execute(query.encode())
        rows = await cursor.fetchall() if cursor.description else []
        count = cursor.rowcount
        await conn.rollback()
    return rows, count


async def new_key(store: PostgresApiKeyStore, name: str = "billing") -> NewApiKey:
    return await CreateApiKey(store, SystemClock(), SecretsRandomness())(name, ApiKeyScope.WRITE)


# --------------------------------------------------------------------------- keys


async def test_a_key_is_stored_as_its_digest_and_found_by_it(pool: Pool, database_url: str) -> None:
    store = PostgresApiKeyStore(pool)
    created = await new_key(store)
    secret = created.secret.reveal()

    assert await store.find(digest(secret)) == created.key
    assert await store.find(hashlib.sha256(b"another").digest()) is None
    with psycopg.connect(database_url) as owner:
        [row] = owner.execute("SELECT * FROM api_keys").fetchall()
    assert secret not in repr(row)
    assert bytes(row[3]) == hashlib.sha256(secret.encode()).digest()


async def test_a_taken_prefix_stores_nothing(pool: Pool) -> None:
    store = PostgresApiKeyStore(pool)
    created = await new_key(store)
    twin = msgspec.structs.replace(created.key, id="00000000-0000-0000-0000-000000000001")

    assert await store.add(twin, hashlib.sha256(b"other").digest()) is False
    assert [k.id for k in await store.all()] == [created.key.id]


async def test_keys_are_found_by_id_or_prefix_and_revoked_once(pool: Pool) -> None:
    store = PostgresApiKeyStore(pool)
    created = await new_key(store)
    key = created.key

    assert await store.get(key_id=key.id) == key
    assert await store.get(prefix=key.prefix) == key
    assert await store.get(prefix="zzzzzzzz") is None
    first = await store.revoke(key.id, T0)
    second = await store.revoke(key.id, T1)

    assert first is not None
    assert first.revoked_at == T0
    assert second is not None
    assert second.revoked_at == T0  # the first revocation stands
    assert await store.revoke("00000000-0000-0000-0000-000000000009", T1) is None
    assert (await store.all())[0].revoked_at == T0


async def test_a_use_is_written_at_most_once_a_minute(pool: Pool) -> None:
    store = PostgresApiKeyStore(pool)
    key = (await new_key(store)).key
    other = (await new_key(store, "other")).key

    await store.record_use({key.id: T0})
    await store.record_use({key.id: T0 + timedelta(seconds=59), other.id: T0})
    after_59s = {k.id: k.last_used_at for k in await store.all()}
    await store.record_use({key.id: T0 + timedelta(seconds=60)})

    assert after_59s == {key.id: T0, other.id: T0}
    latest = await store.get(key_id=key.id)
    assert latest is not None
    assert latest.last_used_at == T0 + timedelta(seconds=60)


async def test_no_tenant_sees_or_adds_a_key(pool: Pool) -> None:
    await new_key(PostgresApiKeyStore(pool))

    inside, _ = await as_runtime(pool, "SELECT * FROM api_keys", tenant="alice")
    outside, _ = await as_runtime(pool, "SELECT * FROM api_keys")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await as_runtime(
            pool,
            "INSERT INTO api_keys (id, name, prefix, key_sha256, scope) VALUES "
            "(gen_random_uuid(), 'x', 'AAAAAAAA', sha256('x'), 'write')",
            tenant="alice",
        )

    assert inside == []
    assert len(outside) == 1


# ---------------------------------------------------------- the host's list across tenants


async def seed(pg_uow: UnitOfWorkFactory) -> None:
    """Three users' connections, made a second apart in the order carol, alice, bob."""
    for n, user in enumerate(("carol", "alice", "bob")):
        made = connection(user, n, f"00000000-0000-0000-0000-00000000000{n}")
        await add(pg_uow, msgspec.structs.replace(made, created_at=T0 + timedelta(seconds=n)))


async def test_the_host_lists_every_tenants_connection_in_pages(
    pool: Pool, pg_uow: UnitOfWorkFactory
) -> None:
    await seed(pg_uow)
    directory = PostgresConnectionDirectory(pool)

    first = await directory.list(ConnectionListQuery(limit=2))
    rest = await directory.list(
        ConnectionListQuery(after=(first[-1].created_at, first[-1].id), limit=2)
    )

    assert [c.user_id for c in [*first, *rest]] == ["carol", "alice", "bob"]
    assert first[0].account is not None
    assert first[0].account.email == "u0@example.com"
    assert first[0].token_expires_at == T0
    assert first[0].status is ConnectionStatus.ACTIVE


async def test_the_host_list_filters_by_status(pool: Pool, pg_uow: UnitOfWorkFactory) -> None:
    await seed(pg_uow)
    async with pg_uow("bob") as uow:
        bob = await uow.connections.get("bob")
        assert bob is not None
        await uow.connections.save(bob.disconnected(T1))
        await uow.commit()
    directory = PostgresConnectionDirectory(pool)

    gone = await directory.list(ConnectionListQuery(status=ConnectionStatus.DISCONNECTED))
    active = await directory.list(ConnectionListQuery(status=ConnectionStatus.ACTIVE))

    assert [c.user_id for c in gone] == ["bob"]
    assert gone[0].token_expires_at is None
    assert [c.user_id for c in active] == ["carol", "alice"]


async def test_a_tenant_still_sees_only_its_own_row_even_with_the_host_scope(
    pool: Pool, pg_uow: UnitOfWorkFactory
) -> None:
    await seed(pg_uow)
    query = "SELECT user_id FROM calendar_connections"

    as_alice, _ = await as_runtime(pool, query, tenant="alice", scope="host")
    as_nobody, _ = await as_runtime(pool, query)
    another_scope, _ = await as_runtime(pool, query, scope="admin")
    as_host, _ = await as_runtime(pool, query, scope="host")

    assert [r["user_id"] for r in as_alice] == ["alice"]
    assert as_nobody == []
    assert another_scope == []
    assert sorted(r["user_id"] for r in as_host) == ["alice", "bob", "carol"]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE calendar_connections SET last_error = 'pwned'",
        "DELETE FROM calendar_connections",
        "DELETE FROM meetings",
        "DELETE FROM calendly_webhook_routes",
    ],
)
async def test_the_host_scope_reads_connections_and_changes_nothing(
    pool: Pool, pg_uow: UnitOfWorkFactory, statement: str
) -> None:
    await seed(pg_uow)
    carol = connection("carol", 0, "00000000-0000-0000-0000-000000000000")
    async with pg_uow("carol") as uow:
        await uow.meetings.apply(carol, MeetingChange(meeting=Meeting(event_uri=EV + "m1")))
        await uow.commit()

    _, count = await as_runtime(pool, statement, scope="host")

    assert count == 0


async def test_the_host_scope_ends_with_its_transaction(
    database_url: str, pg_uow: UnitOfWorkFactory
) -> None:
    await seed(pg_uow)
    single = make_pool(database_url, runtime_role=RUNTIME_ROLE, min_size=1, max_size=1)
    await single.open(wait=True)
    try:
        assert len(await PostgresConnectionDirectory(single).list(ConnectionListQuery())) == 3
        rows, _ = await as_runtime(
            single,
            "SELECT current_setting('app.scope', true) AS scope, "
            "(SELECT count(*) FROM calendar_connections) AS seen",
        )
    finally:
        await single.close()

    assert rows == [{"scope": "", "seen": 0}] or rows == [{"scope": None, "seen": 0}]


async def test_the_host_list_reads_no_secret(pool: Pool, pg_uow: UnitOfWorkFactory) -> None:
    await seed(pg_uow)

    listed = await PostgresConnectionDirectory(pool).list(ConnectionListQuery())

    text = repr(listed)
    for secret in ("at-0", "rt-0", "key-0", "token-carol0"):
        assert secret not in text
