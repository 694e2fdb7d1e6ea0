"""One pooled connection, one transaction, one tenant: the Postgres unit of work."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Protocol, Self

import psycopg
import psycopg_pool
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from domain.errors import StorageUnavailable
from domain.ports import Route, UnitOfWork, UnitOfWorkFactory
from domain.secret import Secret

from .pool import sweep_broken_connections
from .repositories import (
    CHANGED_MEETINGS,
    LATEST_CHANGE,
    LIST_MEETINGS,
    RECORD_EVENT,
    SELECT_CONNECTION,
    SELECT_TROUBLE,
    PostgresAuthorizationRepository,
    PostgresConnectionRepository,
    PostgresMeetingRepository,
    PostgresWebhookEventLog,
    secret_context,
)

Connection = psycopg.AsyncConnection[dict[str, Any]]

SET_TENANT = "SELECT set_config('app.user_id', %s, true)"
ROUTE_BY_TOKEN = """
SELECT user_id, connection_id::text AS connection_id, calendly_user_uri, signing_key_enc
FROM calendly_webhook_routes WHERE webhook_token = %s
"""  # noqa: S105 - SQL naming a column called token, not a password
# The first of the given URIs (in their order) that a connected user holds: one index probe
# per URI, one round trip whatever their number.
ROUTE_BY_USER_URIS = """
SELECT user_id, connection_id::text AS connection_id, calendly_user_uri, signing_key_enc
FROM calendly_webhook_routes WHERE calendly_user_uri = ANY(%(uris)s::text[])
ORDER BY array_position(%(uris)s::text[], calendly_user_uri) LIMIT 1
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


class Session:
    """The unit of work's connection as repositories use it: one `execute` per statement.

    Round trips are the webhook path's main cost. A statement that opens the transaction goes
    out in one round trip with psycopg's `BEGIN` (pipeline mode), and so does the tenant
    setting `act_as` asked for: it travels just ahead of the next statement, so every statement
    still runs as that tenant (DR-19). Errors surface from the same `execute` call as before.

    It also notes whether the transaction may have written anything (`wrote`): only the
    statements below are known to write nothing, everything else counts as a write.
    """

    # Statements that never write (locks and settings they take end with the transaction).
    READS: frozenset[str] = frozenset(
        {
            SET_TENANT,
            ROUTE_BY_TOKEN,
            ROUTE_BY_USER_URIS,
            USERS_WITHOUT_ACCOUNT,
            SELECT_CONNECTION,
            SELECT_TROUBLE,
            LIST_MEETINGS,
            CHANGED_MEETINGS,
            LATEST_CHANGE,
        }
    )
    # A plain INSERT ... ON CONFLICT DO NOTHING (no CTE) that inserted no row wrote nothing.
    NOTHING_WITHOUT_ROWS: frozenset[str] = frozenset({RECORD_EVENT})

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pending_tenant: str | None = None
        self.wrote = False

    async def execute(self, query: str, params: Any = None) -> psycopg.AsyncCursor[Any]:
        conn = self.conn
        tenant, self.pending_tenant = self.pending_tenant, None
        if tenant is None and conn.info.transaction_status != TransactionStatus.IDLE:
            cursor = await conn.execute(query, params)
        else:
            async with conn.pipeline():
                if tenant is not None:
                    await conn.execute(SET_TENANT, (tenant,))
                cursor = await conn.execute(query, params)
        if query not in self.READS and not (
            query in self.NOTHING_WITHOUT_ROWS and cursor.rowcount == 0
        ):
            self.wrote = True
        return cursor


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
        self._session: Session | None = None
        self._committed = False

    async def __aenter__(self) -> Self:
        try:
            self._lease = self._pool.connection()
            conn = await self._lease.__aenter__()
            self._conn = conn
            conn.row_factory = dict_row
        except UNAVAILABLE as exc:
            await self._release(exc)
            sweep_broken_connections(self._pool)
            raise StorageUnavailable("the database cannot be reached") from exc
        session = self._session = Session(conn)
        # Set with the first statement (see Session): nothing runs before it as anyone else.
        session.pending_tenant = self._user_id
        self.connections = PostgresConnectionRepository(session, self._cipher)
        self.authorizations = PostgresAuthorizationRepository(session, self._cipher)
        self.meetings = PostgresMeetingRepository(session)
        self.webhook_events = PostgresWebhookEventLog(session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        unavailable = isinstance(exc, UNAVAILABLE)
        conn, session = self._conn, self._session
        if conn is not None and not self._committed and not conn.closed:
            try:
                if (
                    session is not None
                    and not session.wrote
                    and conn.info.transaction_status == TransactionStatus.INTRANS
                ):
                    # Nothing was written, so COMMIT ends it exactly as ROLLBACK would, but
                    # psycopg forgets its prepared statements on every ROLLBACK (and sends
                    # DEALLOCATE ALL): reads and duplicate deliveries would never run
                    # prepared (DR-20).
                    await conn.commit()
                else:
                    await conn.rollback()
            except UNAVAILABLE:
                unavailable = True
        await self._release(exc)
        if unavailable:
            sweep_broken_connections(self._pool)
            raise StorageUnavailable("the database connection failed") from exc

    async def _release(self, exc: BaseException | None) -> None:
        lease, self._lease, self._conn, self._session = self._lease, None, None, None
        if lease is not None:
            # The transaction is already settled; the pool checks the connection's state on
            # return and discards a broken one.
            with contextlib.suppress(*UNAVAILABLE):
                await lease.__aexit__(None, None, None)

    @property
    def conn(self) -> Session:
        assert self._session is not None, "use the unit of work inside `async with`"
        return self._session

    async def act_as(self, user_id: str) -> None:
        """The tenant for every later statement; sent with the next one (no round trip)."""
        self._user_id = user_id
        self.conn.pending_tenant = user_id

    async def route(
        self, *, webhook_token: str | None = None, calendly_user_uris: Sequence[str] = ()
    ) -> Route | None:
        if webhook_token is not None:
            cursor = await self.conn.execute(ROUTE_BY_TOKEN, (webhook_token,))
        elif calendly_user_uris:
            cursor = await self.conn.execute(ROUTE_BY_USER_URIS, {"uris": list(calendly_user_uris)})
        else:
            return None
        row = await cursor.fetchone()
        if row is None:
            return None
        sealed = row["signing_key_enc"]
        return Route(
            user_id=row["user_id"],
            connection_id=row["connection_id"],
            calendly_user_uri=row["calendly_user_uri"] or "",
            signing_key=None
            if sealed is None
            else self._cipher.decrypt(
                sealed, context=secret_context(row["connection_id"], "signing_key")
            ),
        )

    async def lock(self, name: str) -> None:
        await self.conn.execute(ADVISORY_LOCK, (name,))

    async def users_without_account(self, limit: int = 10_000) -> list[str]:
        cursor = await self.conn.execute(USERS_WITHOUT_ACCOUNT, (limit,))
        return [row["user_id"] for row in await cursor.fetchall()]

    async def commit(self) -> None:
        session = self.conn
        if session.pending_tenant is not None:
            # act_as with nothing after it: nothing to send; the transaction ends here.
            session.pending_tenant = None
        await session.conn.commit()
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
