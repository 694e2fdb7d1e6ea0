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

from .group_commit import BATCH_ONLY, LOCK_USERS, SET_LOCK_TIMEOUT
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


# Who listens for a meeting's doorbell (migrations/0018, DR-57). A registration is its row,
# committed, then the users' locks (`meetings:<user>`, which every writer of meetings takes
# before its first write) each taken and let go at once: a batch that held one when the row
# committed has committed too by then, so the stream's first read sees its writes; a batch
# that takes one later runs its doorbell statement after the row committed, and rings. No lock
# is held while another is waited for: a registration never holds up a batch.
REGISTER_WATCHERS: Final = """
INSERT INTO live_watchers (user_id, process)
SELECT u, %(process)s FROM unnest(%(users)s::text[]) AS u
ON CONFLICT (user_id, process) DO UPDATE SET seen_at = now()
"""
# The users among them whose lock is held now (a write of theirs under way); the free ones'
# locks are taken and let go in the same statement, which waits for none.
BUSY_USERS: Final = (
    "SELECT u AS user_id FROM unnest(%s::text[]) AS u"
    " WHERE NOT pg_try_advisory_xact_lock(hashtextextended('meetings:' || u, 0))"
)
# How long a registration waits for a write of its user under way (a token refresh holds the
# user's lock across Calendly's answer, 15 s at most per try, DR-33) before its streams end
# (their pages come back).
WAIT_FOR_WRITES_SECONDS: Final = 30
# A refresh needs no lock: the row is there already (those that are not are registered again).
REFRESH_WATCHERS: Final = (
    "UPDATE live_watchers SET seen_at = now() WHERE process = %(process)s"
    " AND user_id = ANY(%(users)s) RETURNING user_id"
)
FORGET_WATCHERS: Final = (
    "DELETE FROM live_watchers WHERE process = %(process)s AND user_id = ANY(%(users)s)"
)
PURGE_WATCHERS: Final = "DELETE FROM live_watchers WHERE seen_at < now() - %(stale)s"
STALE_WATCHERS: Final = timedelta(minutes=10)
EVERYONE: Final = "*"


class PostgresLiveWatchers:
    """This process's rows in `live_watchers`: the users whose meetings' doorbells it hears."""

    def __init__(self, pool: Pool, process: str) -> None:
        self._pool = pool
        self.process = process

    async def add(self, user_ids: Collection[str]) -> None:
        """This process's rows for `user_ids`, committed (refreshed where they were). A
        registration is this, then `busy` and `wait_for_writes`."""
        if not user_ids:
            return
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    REGISTER_WATCHERS, {"users": sorted(set(user_ids)), "process": self.process}
                )
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc

    async def busy(self, user_ids: Collection[str]) -> set[str]:
        """The users among `user_ids` a write is under way for (their lock is held): the
        others are registered once `add` committed."""
        if not user_ids:
            return set()
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(BUSY_USERS, (sorted(set(user_ids)),))
                return {row["user_id"] for row in await cursor.fetchall()}
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc

    async def wait_for_writes(self, user_id: str, seconds: float = WAIT_FOR_WRITES_SECONDS) -> None:
        """Returns once the write of `user_id` under way has ended (its lock taken and let go);
        StorageUnavailable if that takes longer than `seconds`."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(SET_LOCK_TIMEOUT, (f"{int(seconds * 1000)}ms",))
                await conn.execute(LOCK_USERS, ([user_id],))
        except BATCH_ONLY as exc:
            raise StorageUnavailable("a write of the user is still under way") from exc
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc

    async def refresh(self, user_ids: Collection[str]) -> set[str]:
        """Marks this process's rows of `user_ids` as alive; returns those that had none (purged
        while this process stalled): they must be registered again."""
        if not user_ids:
            return set()
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(
                    REFRESH_WATCHERS, {"users": list(user_ids), "process": self.process}
                )
                found = {row["user_id"] for row in await cursor.fetchall()}
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc
        return set(user_ids) - found

    async def forget(self, user_ids: Collection[str]) -> None:
        """This process no longer listens for `user_ids`."""
        if not user_ids:
            return
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    FORGET_WATCHERS, {"users": list(user_ids), "process": self.process}
                )
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc

    async def purge(self, stale: timedelta = STALE_WATCHERS) -> int:
        """Removes the rows of processes that stopped refreshing theirs (they died)."""
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(PURGE_WATCHERS, {"stale": stale})
                return int(cursor.rowcount)
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc
