"""One pooled connection, one transaction, one tenant: the Postgres unit of work."""

from __future__ import annotations

import contextlib
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Protocol, Self

import psycopg
import psycopg_pool
from psycopg.rows import dict_row

from domain.errors import StorageUnavailable
from domain.ports import Route, UnitOfWork, UnitOfWorkFactory
from domain.secret import Secret

from .pool import sweep_broken_connections
from .repositories import (
    PostgresAuthorizationRepository,
    PostgresConnectionRepository,
    PostgresMeetingRepository,
    PostgresWebhookEventLog,
)

Connection = psycopg.AsyncConnection[dict[str, Any]]

SET_TENANT = "SELECT set_config('app.user_id', %s, true)"
ROUTE_BY_TOKEN = """
SELECT user_id, connection_id::text AS connection_id, calendly_user_uri
FROM calendly_webhook_routes WHERE webhook_token = %s
"""  # noqa: S105 - SQL naming a column called token, not a password
ROUTE_BY_USER_URI = """
SELECT user_id, connection_id::text AS connection_id, calendly_user_uri
FROM calendly_webhook_routes WHERE calendly_user_uri = %s
"""
ADVISORY_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
# The routes are readable outside any tenant; a connection without a URI has a route without one.
USERS_WITHOUT_ACCOUNT = """
SELECT user_id FROM calendly_webhook_routes WHERE calendly_user_uri IS NULL
ORDER BY user_id LIMIT %s
"""
# Infrastructure failures that mean "try again later", never "your request was wrong".
UNAVAILABLE = (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg.errors.AdminShutdown)


class TokenCipher(Protocol):
    """Encrypts secrets at rest; `context` binds a blob to its row and column."""

    def encrypt(self, secret: Secret, *, context: str) -> bytes: ...

    def decrypt(self, blob: bytes, *, context: str) -> Secret: ...


class PostgresUnitOfWork(UnitOfWork):
    """Leaving without `commit()` rolls back; database outages surface as StorageUnavailable."""

    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Connection],
        cipher: TokenCipher,
        user_id: str | None,
    ) -> None:
        self._pool = pool
        self._cipher = cipher
        self._user_id = user_id
        self._lease: AbstractAsyncContextManager[Connection] | None = None
        self._conn: Connection | None = None
        self._committed = False

    async def __aenter__(self) -> Self:
        try:
            self._lease = self._pool.connection()
            conn = await self._lease.__aenter__()
            self._conn = conn
            conn.row_factory = dict_row
            if self._user_id is not None:
                await conn.execute(SET_TENANT, (self._user_id,))
        except UNAVAILABLE as exc:
            await self._release(exc)
            sweep_broken_connections(self._pool)
            raise StorageUnavailable("the database cannot be reached") from exc
        self.connections = PostgresConnectionRepository(conn, self._cipher)
        self.authorizations = PostgresAuthorizationRepository(conn, self._cipher)
        self.meetings = PostgresMeetingRepository(conn)
        self.webhook_events = PostgresWebhookEventLog(conn)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        unavailable = isinstance(exc, UNAVAILABLE)
        if self._conn is not None and not self._committed and not self._conn.closed:
            try:
                await self._conn.rollback()
            except UNAVAILABLE:
                unavailable = True
        await self._release(exc)
        if unavailable:
            sweep_broken_connections(self._pool)
            raise StorageUnavailable("the database connection failed") from exc

    async def _release(self, exc: BaseException | None) -> None:
        lease, self._lease, self._conn = self._lease, None, None
        if lease is not None:
            # The transaction is already settled; the pool checks the connection's state on
            # return and discards a broken one.
            with contextlib.suppress(*UNAVAILABLE):
                await lease.__aexit__(None, None, None)

    @property
    def conn(self) -> Connection:
        assert self._conn is not None, "use the unit of work inside `async with`"
        return self._conn

    async def act_as(self, user_id: str) -> None:
        self._user_id = user_id
        await self.conn.execute(SET_TENANT, (user_id,))

    async def route(
        self, *, webhook_token: str | None, calendly_user_uri: str | None
    ) -> Route | None:
        if webhook_token is not None:
            cursor = await self.conn.execute(ROUTE_BY_TOKEN, (webhook_token,))
        elif calendly_user_uri is not None:
            cursor = await self.conn.execute(ROUTE_BY_USER_URI, (calendly_user_uri,))
        else:
            return None
        row = await cursor.fetchone()
        if row is None:
            return None
        return Route(
            user_id=row["user_id"],
            connection_id=row["connection_id"],
            calendly_user_uri=row["calendly_user_uri"] or "",
        )

    async def lock(self, name: str) -> None:
        await self.conn.execute(ADVISORY_LOCK, (name,))

    async def users_without_account(self, limit: int = 10_000) -> list[str]:
        cursor = await self.conn.execute(USERS_WITHOUT_ACCOUNT, (limit,))
        return [row["user_id"] for row in await cursor.fetchall()]

    async def commit(self) -> None:
        await self.conn.commit()
        self._committed = True


def unit_of_work_factory(
    pool: psycopg_pool.AsyncConnectionPool[Connection], cipher: TokenCipher
) -> UnitOfWorkFactory:
    def make(user_id: str | None = None) -> UnitOfWork:
        return PostgresUnitOfWork(pool, cipher, user_id)

    return make


class UnsafeDatabaseRole(Exception):
    """The runtime role could bypass row-level security; the service refuses to start."""


CHECK_ROLE = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls,
       (SELECT count(*) FROM pg_class c
         WHERE c.relowner = r.oid AND c.relkind IN ('r', 'p')
           AND c.relnamespace = 'public'::regnamespace) AS owned_tables
FROM pg_roles r WHERE r.rolname = current_user
"""


async def check_runtime_role(pool: psycopg_pool.AsyncConnectionPool[Connection]) -> str:
    """Raise UnsafeDatabaseRole unless the pool's role is bound by row-level security."""
    async with pool.connection() as conn:
        cursor = await conn.execute(CHECK_ROLE)
        row = await cursor.fetchone()
        await conn.rollback()
    assert row is not None
    problems = []
    if row["rolsuper"]:
        problems.append("is a superuser")
    if row["rolbypassrls"]:
        problems.append("has BYPASSRLS")
    if row["owned_tables"]:
        problems.append(f"owns {row['owned_tables']} tables")
    if problems:
        raise UnsafeDatabaseRole(
            f"the database role {row['rolname']!r} {' and '.join(problems)}: row-level security "
            "would not protect tenants. Set DATABASE_RUNTIME_ROLE to a role that owns nothing "
            "(the migrator creates 'calendly_app')."
        )
    return str(row["rolname"])
