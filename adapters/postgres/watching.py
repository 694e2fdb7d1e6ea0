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

from .group_commit import BATCH_ONLY, LOCK_TIMEOUT_MS, LOCK_USERS, SET_LOCK_TIMEOUT
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


# Who listens for a meeting's doorbell (migrations/0018, DR-57). A user is registered under the
# user's lock, which every writer of meetings takes before its first write: a write either
# committed before the registration (the stream's first read, after it, sees the write) or
# its trigger sees the registration and rings. Locks in Python's sorted order, as a batch of
# deliveries takes them (group_commit.LOCK_USERS), and within LOCK_TIMEOUT_MS: a lock held
# long elsewhere (a token refresh across Calendly's answer, DR-33) then holds up only its
# own user, registered alone.
REGISTER_WATCHERS: Final = """
INSERT INTO live_watchers AS w (user_id, process)
SELECT u, %(process)s FROM unnest(%(users)s::text[]) AS u
ON CONFLICT (user_id, process) DO UPDATE SET seen_at = now()
RETURNING w.user_id, (w.xmax = 0) AS inserted
"""
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

    async def register(self, user_ids: Collection[str]) -> set[str]:
        """Registers `user_ids` (or refreshes them), each under its user's lock; returns those
        that had no row (new here, or purged meanwhile)."""
        users = sorted(set(user_ids))
        if not users:
            return set()
        try:
            try:
                return await self._register(users, timeout_ms=LOCK_TIMEOUT_MS)
            except BATCH_ONLY:
                if len(users) == 1:
                    return await self._register(users, timeout_ms=None)
            # A lock held long elsewhere: each user alone, so that it holds up only its own.
            inserted: set[str] = set()
            for user in users:
                inserted |= await self._register([user], timeout_ms=None)
            return inserted
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc

    async def _register(self, users: list[str], timeout_ms: int | None) -> set[str]:
        async with self._pool.connection() as conn, conn.transaction():
            if timeout_ms is not None:
                await conn.execute(SET_LOCK_TIMEOUT, (f"{timeout_ms}ms",))
            if users != [EVERYONE]:
                await conn.execute(LOCK_USERS, (users,))
            cursor = await conn.execute(
                REGISTER_WATCHERS, {"users": users, "process": self.process}
            )
            rows = await cursor.fetchall()
        return {row["user_id"] for row in rows if row["inserted"]}

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
