"""The unit of work's connection as repositories use it: one `execute` per statement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg
from psycopg.pq import TransactionStatus

from .pool import Connection

SET_TENANT = "SELECT set_config('app.user_id', %s, true)"
# The tenant's lock (the one the meetings upsert and the change log take, 0005 and 0008),
# taken before the transaction's first write: DR-33.
LOCK_TENANT = "SELECT pg_advisory_xact_lock(hashtextextended('meetings:' || %s, 0))"


@dataclass(frozen=True, slots=True)
class ReadOnly:
    """Statements that write nothing, declared by the repository whose SQL they are (DR-20).

    The session counts every other statement as a write. One left out is merely slower (the
    transaction then ends with ROLLBACK, and psycopg forgets its prepared statements); one
    listed that can write would let a unit of work left without `commit()` keep what it wrote.
    """

    # Never write (locks and settings they take end with the transaction).
    reads: frozenset[str] = frozenset()
    # A plain INSERT ... ON CONFLICT DO NOTHING (no CTE) that inserted no row wrote nothing.
    nothing_without_rows: frozenset[str] = frozenset()

    def __or__(self, other: ReadOnly) -> ReadOnly:
        return ReadOnly(
            reads=self.reads | other.reads,
            nothing_without_rows=self.nothing_without_rows | other.nothing_without_rows,
        )


class Session:
    """The unit of work's connection as repositories use it: one `execute` per statement.

    Round trips are the webhook path's main cost. A statement that opens the transaction goes
    out in one round trip with psycopg's `BEGIN` (pipeline mode), and so does the tenant
    setting `act_as` asked for: it travels just ahead of the next statement, so every statement
    still runs as that tenant (DR-19). Errors surface from the same `execute` call as before.

    It also notes whether the transaction may have written anything (`wrote`): only the
    statements in `read_only` (what the repositories declared) are known to write nothing,
    everything else counts as a write.

    A tenant's transaction takes the tenant's advisory lock just before its first write
    statement (row locks included), in the same round trip (DR-33): every writer of a user then
    takes that lock before any row lock, so no two orders can deadlock, and one user's
    transactions get their transaction ids in the order they commit.
    """

    # The session's own statements.
    READ_ONLY: ClassVar[ReadOnly] = ReadOnly(reads=frozenset({SET_TENANT}))

    def __init__(self, conn: Connection, read_only: ReadOnly) -> None:
        self.conn = conn
        self.pending_tenant: str | None = None
        self.wrote = False
        self._reads = read_only.reads
        self._nothing_without_rows = read_only.nothing_without_rows
        self._tenant: str | None = None
        self._locked = False

    async def execute(self, query: str, params: Any = None) -> psycopg.AsyncCursor[Any]:
        conn = self.conn
        tenant, self.pending_tenant = self.pending_tenant, None
        if tenant is not None and tenant != self._tenant:
            self._tenant, self._locked = tenant, False
        writes = query not in self._reads
        lock = writes and not self._locked and self._tenant is not None
        if tenant is None and not lock and conn.info.transaction_status != TransactionStatus.IDLE:
            cursor = await conn.execute(query, params)
        else:
            async with conn.pipeline():
                if tenant is not None:
                    await conn.execute(SET_TENANT, (tenant,))
                if lock:
                    await conn.execute(LOCK_TENANT, (self._tenant,))
                    self._locked = True
                cursor = await conn.execute(query, params)
        if writes and not (query in self._nothing_without_rows and cursor.rowcount == 0):
            self.wrote = True
        return cursor
