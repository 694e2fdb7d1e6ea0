"""The change feed over psycopg 3: the change log, read in (xid, id) order below the snapshot's
xmin, with each subject as it is now (DR-31). Read across tenants, like the host's connection
list (DR-30): its own READ ONLY transaction with the host scope and no tenant."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import msgspec
import psycopg_pool

from domain.changes import Change, ChangeFeed, ChangeKind, ChangePosition
from domain.errors import CursorExpired, StorageUnavailable
from domain.ports import ListedConnection, MeetingView

from .directory import CONNECTION_SNAPSHOT_COLUMNS, HOST_SCOPE, READ_ONLY, ConnectionRow
from .meetings import MEETING_COLUMNS, PostgresMeetingRepository
from .unit_of_work import UNAVAILABLE

Pool = psycopg_pool.AsyncConnectionPool[Any]

CHANGE_COLUMNS: Final = """
SELECT id, xid::text AS xid, user_id, user_seq, kind, subject_id::text AS subject_id, event,
       created_at
FROM change_log
"""
# Only transactions below the statement's snapshot xmin have all ended: what they wrote is all
# visible now or never will be, so nothing can later appear before the last position read.
_HORIZON: Final = "xid < pg_snapshot_xmin(pg_current_snapshot())"
# The table's columns by name: a bare `xid` in ORDER BY would be the text column above, which
# sorts "1000" before "99" (and a cursor taken there would skip rows for ever).
_ORDER: Final = "ORDER BY change_log.xid, change_log.id"
FIRST_CHANGES: Final = CHANGE_COLUMNS + f"WHERE {_HORIZON} {_ORDER} LIMIT %(limit)s"
NEXT_CHANGES: Final = (
    CHANGE_COLUMNS
    + "WHERE (xid, id) > (%(xid)s::xid8, %(id)s::bigint) AND "
    + f"{_HORIZON} {_ORDER} LIMIT %(limit)s"
)
# How far the log was pruned (migrations/0010): a cursor before it lost changes (DR-35).
PRUNED_UP_TO: Final = "SELECT xid::text AS xid, id FROM change_log_pruned"
RETENTION_SCOPE: Final = "SELECT set_config('app.scope', 'retention', true)"
# One batch of the log's oldest rows, in feed order, below the horizon; each marked prunable when
# it is older than the cutoff and no host webhook still needs it: no endpoint has yet to fan it
# out, and no stream of its user has yet to deliver it. Only the leading run of prunable rows
# goes (a prefix of the feed), and the position pruned up to moves in the same statement.
PRUNE: Final = """
WITH batch AS (
    SELECT c.id, c.xid, c.user_id, c.user_seq, c.created_at
    FROM change_log c, change_log_pruned p
    WHERE (c.xid, c.id) > (p.xid, p.id) AND c.xid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY c.xid, c.id LIMIT %(limit)s
), marked AS (
    SELECT b.id, b.xid, row_number() OVER (ORDER BY b.xid, b.id) AS n,
           b.created_at < now() - make_interval(days => %(days)s)
           AND NOT EXISTS (SELECT 1 FROM host_webhook_endpoints e
                           WHERE (b.xid, b.id) > (e.fan_xid, e.fan_id))
           AND NOT EXISTS (SELECT 1 FROM host_webhook_streams s
                           WHERE s.user_id = b.user_id AND s.sent_seq < b.user_seq) AS prunable
    FROM batch b
), cut AS (
    SELECT coalesce(min(n) FILTER (WHERE NOT prunable), %(limit)s + 1) AS first_kept FROM marked
), gone AS (
    DELETE FROM change_log c USING marked m, cut
    WHERE c.id = m.id AND m.n < cut.first_kept
    RETURNING c.xid, c.id
), moved AS (
    UPDATE change_log_pruned p SET xid = last.xid, id = last.id, pruned_at = now()
    FROM (SELECT xid, id FROM gone ORDER BY xid DESC, id DESC LIMIT 1) last
    RETURNING p.id
)
SELECT (SELECT count(*) FROM gone) AS pruned, (SELECT count(*) FROM moved) AS moved
"""
# One pruner at a time (a transaction-level try-lock: another pruner just skips its turn).
PRUNE_LOCK: Final = (
    "SELECT pg_try_advisory_xact_lock(hashtextextended('change_log:prune', 0)) AS ok"
)
CONNECTION_SNAPSHOTS: Final = CONNECTION_SNAPSHOT_COLUMNS + "WHERE c.id = ANY(%(ids)s::uuid[])"
MEETING_SNAPSHOTS: Final = MEETING_COLUMNS + "WHERE m.id = ANY(%(ids)s::uuid[])"


class ChangeRow(msgspec.Struct, kw_only=True):
    """A row of the change log's columns (the queries above; host_webhooks.py reads them too)."""

    id: int
    xid: str
    user_id: str
    user_seq: int
    kind: ChangeKind
    subject_id: str
    event: str
    created_at: datetime


async def with_snapshots(conn: Any, rows: Sequence[ChangeRow]) -> list[Change]:
    """The changes of `rows`, each with its subject as it is now (two queries at most), read on
    `conn` in the caller's transaction (the host scope: every user's subjects are visible)."""
    connections = await _connections(conn, rows)
    meetings = await _meetings(conn, rows)
    return [
        Change(
            position=ChangePosition(int(row.xid), row.id),
            user_id=row.user_id,
            user_seq=row.user_seq,
            kind=row.kind,
            subject_id=row.subject_id,
            event=row.event,
            created_at=row.created_at,
            connection=connections.get(row.subject_id) if row.kind == "connection" else None,
            meeting=meetings.get(row.subject_id) if row.kind == "meeting" else None,
        )
        for row in rows
    ]


class PostgresChangeFeed(ChangeFeed):
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def read(self, after: ChangePosition | None, limit: int) -> Sequence[Change]:
        query, params = (
            (FIRST_CHANGES, {"limit": limit})
            if after is None
            else (NEXT_CHANGES, {"xid": str(after.xid), "id": after.id, "limit": limit})
        )
        try:
            async with self._pool.connection() as conn, conn.transaction():
                async with conn.pipeline():
                    await conn.execute(READ_ONLY)
                    await conn.execute(HOST_SCOPE)
                    cursor = await conn.execute(query, params)
                    # After the rows, in a later snapshot: a prune that committed before the
                    # rows were read is seen here, so no page can silently miss its rows.
                    pruned = await conn.execute(PRUNED_UP_TO)
                rows = [msgspec.convert(r, ChangeRow) for r in await cursor.fetchall()]
                up_to = await pruned.fetchone()
                if after is not None and up_to is not None and after < _position(up_to):
                    raise CursorExpired
                return await with_snapshots(conn, rows)
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc


class PostgresChangeLogRetention:
    """Deletes the change log's old rows (CHANGE_LOG_RETENTION_DAYS; DR-35), in feed order and in
    bounded batches, never one a host webhook stream still needs; one transaction a batch."""

    behind = False

    def __init__(self, pool: Pool, days: int, batch: int = 1000) -> None:
        self._pool = pool
        self._days = days
        self._batch = batch

    async def prune_batch(self) -> int:
        """One batch: how many rows went (0 also when another pruner holds the turn)."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(RETENTION_SCOPE)
                cursor = await conn.execute(PRUNE_LOCK)
                row = await cursor.fetchone()
                if row is None or not row["ok"]:
                    return 0
                cursor = await conn.execute(PRUNE, {"days": self._days, "limit": self._batch})
                result = await cursor.fetchone()
                return int(result["pruned"]) if result else 0
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc

    async def prune(self, max_batches: int = 100) -> int:
        """Batches until one comes back short (or `max_batches`): the rows pruned. `behind`
        says whether it stopped at the cap with rows still to go."""
        total = 0
        self.behind = False
        for _ in range(max_batches):
            pruned = await self.prune_batch()
            total += pruned
            if pruned < self._batch:
                return total
        self.behind = True
        return total

    async def pruned_up_to(self) -> ChangePosition:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(RETENTION_SCOPE)
                cursor = await conn.execute(PRUNED_UP_TO)
                row = await cursor.fetchone()
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc
        return _position(row) if row else ChangePosition(0, 0)


def _position(row: Any) -> ChangePosition:
    return ChangePosition(int(row["xid"]), int(row["id"]))


async def _connections(conn: Any, rows: Sequence[ChangeRow]) -> dict[str, ListedConnection]:
    ids = sorted({row.subject_id for row in rows if row.kind == "connection"})
    if not ids:
        return {}
    cursor = await conn.execute(CONNECTION_SNAPSHOTS, {"ids": ids})
    found = [msgspec.convert(r, ConnectionRow).listed() for r in await cursor.fetchall()]
    return {c.id: c for c in found}


async def _meetings(conn: Any, rows: Sequence[ChangeRow]) -> dict[str, MeetingView]:
    ids = sorted({row.subject_id for row in rows if row.kind == "meeting"})
    if not ids:
        return {}
    cursor = await conn.execute(MEETING_SNAPSHOTS, {"ids": ids})
    views = PostgresMeetingRepository.views(await cursor.fetchall())
    return {view.id: view for view in views}
