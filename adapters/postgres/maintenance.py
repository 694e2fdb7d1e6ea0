"""The maintenance queue in Postgres: leases per connection, FOR UPDATE SKIP LOCKED."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import psycopg_pool

from domain.ports import MaintenanceDue, MaintenanceQueue, MaintenanceResult

Pool = psycopg_pool.AsyncConnectionPool[Any]

CLAIM = """
WITH due AS (
    SELECT connection_id FROM connection_maintenance
    WHERE (lease_until IS NULL OR lease_until < now())
      AND (retry_at IS NULL OR retry_at <= now())
      AND (refresh_due - %(margin)s <= now() OR subscription_due <= now() OR sync_due <= now())
    ORDER BY least(refresh_due - %(margin)s, subscription_due, sync_due)
    FOR UPDATE SKIP LOCKED
    LIMIT %(limit)s
)
UPDATE connection_maintenance m
SET lease_owner = %(owner)s, lease_until = now() + %(lease)s, last_run_at = now()
FROM due WHERE m.connection_id = due.connection_id
RETURNING m.connection_id::text AS connection_id, m.user_id, m.refresh_due,
          m.subscription_due, m.sync_due, m.synced_at, m.failures
"""
COMPLETE = """
UPDATE connection_maintenance SET
    subscription_due = coalesce(%(subscription_due)s, subscription_due),
    -- If someone asked for a sync while we worked (a repair, a reconnect) after our own sync
    -- had started, the sooner of the two wins; a request our sync already covered does not.
    sync_due = CASE WHEN %(sync_due)s::timestamptz IS NULL THEN sync_due
                    WHEN sync_due <> %(claimed_sync_due)s
                         AND sync_due > coalesce(%(synced_at)s::timestamptz, '-infinity')
                        THEN least(sync_due, %(sync_due)s::timestamptz)
                    ELSE %(sync_due)s::timestamptz END,
    synced_at = coalesce(%(synced_at)s, synced_at),
    -- Failures in a row; a rate limit waited out is not one.
    failures = CASE WHEN %(error)s::text IS NULL THEN 0
                    WHEN %(rate_limited)s THEN failures ELSE failures + 1 END,
    last_error = %(error)s,
    retry_at = %(retry_at)s,
    lease_owner = NULL, lease_until = NULL
WHERE connection_id = %(connection_id)s AND lease_owner = %(owner)s
"""
HEARTBEAT = """
INSERT INTO worker_heartbeats (worker_id) VALUES (%(owner)s)
ON CONFLICT (worker_id) DO UPDATE SET seen_at = now()
"""


class PostgresMaintenanceQueue(MaintenanceQueue):
    """Its own short transactions, outside any tenant: the rows hold ids and times only."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def claim(
        self, *, owner: str, limit: int, lease_seconds: float, refresh_margin_seconds: float
    ) -> list[MaintenanceDue]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                CLAIM,
                {
                    "owner": owner,
                    "limit": limit,
                    "lease": timedelta(seconds=lease_seconds),
                    "margin": timedelta(seconds=refresh_margin_seconds),
                },
            )
            rows = await cursor.fetchall()
        return [msgspec.convert(row, MaintenanceDue) for row in rows]

    async def complete(self, due: MaintenanceDue, owner: str, result: MaintenanceResult) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                COMPLETE,
                {
                    "connection_id": due.connection_id,
                    "owner": owner,
                    "subscription_due": result.subscription_due,
                    "sync_due": result.sync_due,
                    "claimed_sync_due": due.sync_due,
                    "synced_at": result.synced_at,
                    "error": result.error,
                    "retry_at": result.retry_at,
                    "rate_limited": result.rate_limited,
                },
            )

    async def heartbeat(self, owner: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(HEARTBEAT, {"owner": owner})
