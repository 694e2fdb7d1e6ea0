"""One pooled connection, one transaction, one tenant: the Postgres unit of work."""

from __future__ import annotations

import contextlib
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Self

import psycopg
import psycopg_pool
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from domain.errors import StorageUnavailable
from domain.ports import UnitOfWork, UnitOfWorkFactory

from .authorizations import PostgresAuthorizationRepository
from .connections import PostgresConnectionRepository
from .erasure import PostgresUserDataEraser
from .meetings import PostgresMeetingRepository
from .pool import Connection, sweep_broken_connections
from .sealing import TokenCipher
from .session import ReadOnly, Session
from .webhook_events import PostgresWebhookEventLog
from .webhook_routes import PostgresWebhookRouteRepository

ADVISORY_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
# Infrastructure failures that mean "try again later", never "your request was wrong".
UNAVAILABLE = (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg.errors.AdminShutdown)
# What the session may count as writing nothing: what each repository declares of its own
# statements (DR-20). A repository left out here merely has all its statements count as writes.
READ_ONLY: ReadOnly = (
    Session.READ_ONLY
    # A lock writes nothing; nor does it count as the first write that takes the tenant's
    # lock (a subscription's lock is held across Calendly calls: DR-11, DR-33).
    | ReadOnly(reads=frozenset({ADVISORY_LOCK}))
    | PostgresConnectionRepository.READ_ONLY
    | PostgresAuthorizationRepository.READ_ONLY
    | PostgresMeetingRepository.READ_ONLY
    | PostgresWebhookEventLog.READ_ONLY
    | PostgresWebhookRouteRepository.READ_ONLY
    | PostgresUserDataEraser.READ_ONLY
)


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
        session = self._session = Session(conn, READ_ONLY)
        # Set with the first statement (see Session): nothing runs before it as anyone else.
        session.pending_tenant = self._user_id
        self.connections = PostgresConnectionRepository(session, self._cipher)
        self.authorizations = PostgresAuthorizationRepository(session, self._cipher)
        self.meetings = PostgresMeetingRepository(session)
        self.webhook_events = PostgresWebhookEventLog(session)
        self.routes = PostgresWebhookRouteRepository(session, self._cipher)
        self.erasure = PostgresUserDataEraser(session)
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

    async def lock(self, name: str) -> None:
        await self.conn.execute(ADVISORY_LOCK, (name,))

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
