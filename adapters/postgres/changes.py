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
from domain.errors import StorageUnavailable
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
FIRST_CHANGES: Final = CHANGE_COLUMNS + f"WHERE {_HORIZON} ORDER BY xid, id LIMIT %(limit)s"
NEXT_CHANGES: Final = (
    CHANGE_COLUMNS
    + "WHERE (xid, id) > (%(xid)s::xid8, %(id)s::bigint) AND "
    + f"{_HORIZON} ORDER BY xid, id LIMIT %(limit)s"
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
                rows = [msgspec.convert(r, ChangeRow) for r in await cursor.fetchall()]
                return await with_snapshots(conn, rows)
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc


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
