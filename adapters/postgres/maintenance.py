"""The maintenance queue in Postgres: leases per connection, FOR UPDATE SKIP LOCKED."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec
import psycopg_pool

from domain.ports import MaintenanceDue, MaintenanceQueue, MaintenanceResult

Pool = psycopg_pool.AsyncConnectionPool[Any]

# One index (connection_maintenance_due_at, migrations/0014) answers it: `due_at` already holds
# the back-off and the lease, so what is due is a range of that index, read in order until
# `limit` unlocked rows are found. The same few pages at a thousand connections or a million.
# Times are the database's (one clock for every worker's leases) unless the caller binds its
# own `now` (a simulated day does).
CLAIM = """
WITH due AS (
    SELECT connection_id FROM connection_maintenance
    WHERE due_at <= coalesce(%(now)s::timestamptz, now())
    ORDER BY due_at
    FOR UPDATE SKIP LOCKED
    LIMIT %(limit)s
)
UPDATE connection_maintenance m
SET lease_owner = %(owner)s, lease_until = coalesce(%(now)s::timestamptz, now()) + %(lease)s,
    last_run_at = coalesce(%(now)s::timestamptz, now())
FROM due WHERE m.connection_id = due.connection_id
RETURNING m.connection_id::text AS connection_id, m.user_id, m.grant_due,
          m.subscription_due, m.sync_due, m.synced_at, m.failures, m.enrich_due,
          coalesce(%(now)s::timestamptz, now()) AS claimed_at
"""
COMPLETE = """
UPDATE connection_maintenance SET
    -- A check asked for while we worked (an outage's sweep, a page opened) is kept if sooner.
    subscription_due = CASE WHEN %(subscription_due)s::timestamptz IS NULL THEN subscription_due
                            WHEN subscription_due <> %(claimed_subscription_due)s
                                THEN least(subscription_due, %(subscription_due)s::timestamptz)
                            ELSE %(subscription_due)s::timestamptz END,
    grant_due = coalesce(%(grant_due)s, grant_due),
    webhooks = coalesce(%(webhooks)s, webhooks),
    -- If someone asked for a sync while we worked (a repair, a reconnect) after our own sync
    -- had started, the sooner of the two wins; a request our sync already covered does not.
    sync_due = CASE WHEN %(sync_due)s::timestamptz IS NULL THEN sync_due
                    WHEN sync_due <> %(claimed_sync_due)s
                         AND sync_due > coalesce(%(synced_at)s::timestamptz, '-infinity')
                        THEN least(sync_due, %(sync_due)s::timestamptz)
                    ELSE %(sync_due)s::timestamptz END,
    synced_at = coalesce(%(synced_at)s, synced_at),
    -- Meetings' details: a delivery that asked again while we worked (it sets the time of its
    -- own transaction, never the one we claimed) keeps its request; else the pass's answer.
    enrich_due = CASE WHEN NOT %(enriched)s THEN enrich_due
                      WHEN enrich_due IS DISTINCT FROM %(claimed_enrich_due)s::timestamptz
                          THEN least(enrich_due, %(enrich_due)s::timestamptz)
                      ELSE %(enrich_due)s::timestamptz END,
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
        self, *, owner: str, limit: int, lease_seconds: float, now: datetime | None = None
    ) -> list[MaintenanceDue]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                CLAIM,
                {
                    "owner": owner,
                    "limit": limit,
                    "lease": timedelta(seconds=lease_seconds),
                    "now": now,
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
                    "claimed_subscription_due": due.subscription_due,
                    "grant_due": result.grant_due,
                    "webhooks": result.webhooks,
                    "sync_due": result.sync_due,
                    "claimed_sync_due": due.sync_due,
                    "synced_at": result.synced_at,
                    "enriched": result.enriched,
                    "enrich_due": result.enrich_due,
                    "claimed_enrich_due": due.enrich_due,
                    "error": result.error,
                    "retry_at": result.retry_at,
                    "rate_limited": result.rate_limited,
                },
            )

    async def heartbeat(self, owner: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(HEARTBEAT, {"owner": owner})
