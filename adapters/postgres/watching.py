"""Free-plan connections polled often while their users watch (DR-42, migrations/0013).

A service process calls `mark` with every user watching there whose connection has no
webhooks, in one statement a tick: their next sync is made due no later than the watched
interval after their last one. Its own short transaction, with the 'watching' scope and no
tenant: it sees only active free-plan connections and writes only `connection_maintenance`.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any, Final

import psycopg_pool

from domain.errors import StorageUnavailable

from .unit_of_work import UNAVAILABLE

Pool = psycopg_pool.AsyncConnectionPool[Any]

WATCHING_SCOPE: Final = "SELECT set_config('app.scope', 'watching', true)"
# Only rows that would change are written (sync_due only ever moves sooner): a watched user
# costs one row write per sync, not one per tick. `synced_at` is when the last sync started;
# never synced: due now. Leases and `retry_at` are left alone: a connection the worker is
# working on, or backing off from (a rate limit waits for its reset), stays as it is.
MARK_WATCHED: Final = """
UPDATE connection_maintenance m
SET sync_due = least(m.sync_due, coalesce(m.synced_at, now()) + %(every)s)
FROM calendar_connections c
WHERE c.user_id = ANY(%(users)s) AND c.provider = 'calendly'
  AND c.status = 'active' AND c.webhook_status = 'unavailable_plan'
  AND m.connection_id = c.id
  AND m.sync_due > coalesce(m.synced_at, now()) + %(every)s
"""


# A page opened on an active connection: its grant is checked at the worker's next claim (its
# subscription check calls Calendly with the token; a revoked grant turns `needs_reauth`), unless
# the worker handled the connection in the last `recent` (every call it makes would have found
# a revoked grant already): at most one check per user per `recent`, whatever the page does.
CHECK_OPENED: Final = """
UPDATE connection_maintenance
SET subscription_due = now()
WHERE user_id = ANY(%(users)s) AND subscription_due > now()
  AND coalesce(last_run_at, '-infinity') < now() - %(recent)s
"""
GRANT_CHECK_INTERVAL: Final = timedelta(minutes=10)


class PostgresWatchedPolling:
    """Makes the watched users' free-plan connections due within `every` of their last sync."""

    def __init__(self, pool: Pool, every: timedelta) -> None:
        self._pool = pool
        self._every = every

    async def mark(self, user_ids: Collection[str]) -> int:
        """One statement for all of `user_ids`; how many connections were made due sooner."""
        if not user_ids:
            return 0
        try:
            async with self._pool.connection() as conn, conn.transaction():
                async with conn.pipeline():
                    await conn.execute(WATCHING_SCOPE)
                    cursor = await conn.execute(
                        MARK_WATCHED, {"users": list(user_ids), "every": self._every}
                    )
                return int(cursor.rowcount)
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc

    async def check_opened(
        self, user_ids: Collection[str], recent: timedelta = GRANT_CHECK_INTERVAL
    ) -> int:
        """One statement: the connections of `user_ids` checked at the worker's next claim,
        but for those it handled within `recent`; how many."""
        if not user_ids:
            return 0
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(
                    CHECK_OPENED, {"users": list(user_ids), "recent": recent}
                )
                return int(cursor.rowcount)
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc
