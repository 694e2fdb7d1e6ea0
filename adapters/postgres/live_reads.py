"""Live updates' reads over the pool: concurrent reads of many users in one round trip.

With thousands of streams open, every delivery makes each process holding a stream of its
user read that user's changes (issue 17). One unit of work per read cost a pooled connection,
its own pipeline and a COMMIT each; here the reads that arrive while earlier ones run go out
together (the group commit's `Coalescer`, DR-48): one connection, one pipeline, one read-only
transaction, sent in one write (DR-59), each read under its own user's tenant (row-level
security is checked statement by statement, and each query follows its tenant's `set_config`).
A batch that fails in any way other than the database going away is read again one read at a
time, so that one read's trouble stays its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import cast

import psycopg
import psycopg_pool

from domain.ports import ChangeReader, MeetingView

from .group_commit import MAX_BATCH, MAX_RUNNING, Coalescer, each_alone, unavailable
from .meetings import CHANGED_MEETINGS, LATEST_CHANGE, PostgresMeetingRepository
from .one_write import Statement, run_transaction
from .pool import Connection, sweep_broken_connections
from .session import SET_TENANT
from .unit_of_work import UNAVAILABLE

# (user, after, limit); after None: the user's latest change number.
Read = tuple[str, int | None, int]
Answer = int | Sequence[MeetingView]


class PostgresChangeReader(ChangeReader):
    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Connection],
        *,
        max_batch: int = MAX_BATCH,
        max_running: int = MAX_RUNNING,
    ) -> None:
        self._pool = pool
        self.reads: Coalescer[Read, Answer] = Coalescer(
            self._read_batch, max_batch=max_batch, max_running=max_running
        )

    async def latest(self, user_id: str) -> int:
        return cast(int, await self.reads((user_id, None, 0)))

    async def since(self, user_id: str, after: int, limit: int) -> Sequence[MeetingView]:
        return cast(Sequence[MeetingView], await self.reads((user_id, after, limit)))

    async def _read_batch(self, reads: Sequence[Read]) -> list[Answer | BaseException]:
        try:
            async with self._pool.connection() as conn:
                try:
                    return await self._read_together(conn, reads)
                except Exception as exc:  # one read's trouble, in SQL or in Python
                    if conn.closed or isinstance(exc, UNAVAILABLE) or len(reads) == 1:
                        raise
                    with contextlib.suppress(psycopg.Error):
                        await conn.rollback()
        except UNAVAILABLE as exc:
            sweep_broken_connections(self._pool)
            return [unavailable(exc) for _ in reads]
        # One read's trouble (a row that cannot be read) is its own: each read alone.
        return await each_alone(self._read_batch, reads)

    @staticmethod
    async def _read_together(
        conn: Connection, reads: Sequence[Read]
    ) -> list[Answer | BaseException]:
        statements: list[Statement] = []
        at: list[int] = []  # each read's statement
        tenant: str | None = None
        for user, after, limit in reads:
            if user != tenant:
                statements.append((SET_TENANT, (user,)))
                tenant = user
            at.append(len(statements))
            if after is None:
                statements.append((LATEST_CHANGE, {"user_id": user}))
            else:
                parameters = {"user_id": user, "after": after, "limit": limit}
                statements.append((CHANGED_MEETINGS, parameters))
        # In one write, and their answers read in one go (DR-59).
        answered = await run_transaction(conn, statements, rows=True)
        answers: list[Answer | BaseException] = []
        for (_, after, _), n in zip(reads, at, strict=True):
            rows = answered[n].rows or []
            if after is None:
                answers.append(int(rows[0]["latest"]) if rows else 0)
            else:
                answers.append(PostgresMeetingRepository.views(rows))
        return answers
