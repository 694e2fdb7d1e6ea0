"""Bounded storage (DR-41): recorded deliveries and expired OAuth states pruned by the worker, in
small batches, each its own short transaction with the 'retention' scope (migrations/0012).

A delivery's row is also its dedup key (`event_id`): Calendly retries a delivery it could not
hand over for up to 24 hours, so the row is kept at least `DEDUP_DAYS`; a shorter payload
retention empties the payload first and deletes the row once the dedup window has passed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import psycopg_pool

from domain.errors import StorageUnavailable

from .unit_of_work import UNAVAILABLE

Pool = psycopg_pool.AsyncConnectionPool[Any]

# Calendly retries a failed delivery for 24 hours; three days leaves room for our own outage
# and for clocks that disagree.
DEDUP_DAYS: Final = 3
RETENTION_SCOPE: Final = "SELECT set_config('app.scope', 'retention', true)"
DELETE_DELIVERIES: Final = """
DELETE FROM calendly_webhook_events WHERE id IN (
    SELECT id FROM calendly_webhook_events
    WHERE created_at < coalesce(%(now)s::timestamptz, now()) - make_interval(days => %(days)s)
    ORDER BY created_at LIMIT %(limit)s
)
"""
STRIP_PAYLOADS: Final = """
UPDATE calendly_webhook_events SET payload = NULL, raw_payload = NULL WHERE id IN (
    SELECT id FROM calendly_webhook_events
    WHERE created_at < coalesce(%(now)s::timestamptz, now()) - make_interval(days => %(days)s)
      AND (payload IS NOT NULL OR raw_payload IS NOT NULL)
    ORDER BY created_at LIMIT %(limit)s
)
"""
# A pending connect's state lives 10 minutes; a callback that comes later still finds it (and
# is told it expired, not that it is unknown) for a day.
DELETE_STATES: Final = """
DELETE FROM calendly_oauth_states WHERE state IN (
    SELECT state FROM calendly_oauth_states
    WHERE expires_at < coalesce(%(now)s::timestamptz, now()) - interval '1 day'
    ORDER BY expires_at LIMIT %(limit)s
)
"""


class PostgresStorageRetention:
    """Deletes what no one needs any more, oldest first, `batch` rows a transaction."""

    def __init__(self, pool: Pool, payload_days: int, batch: int = 1000) -> None:
        self._pool = pool
        self._payload_days = payload_days
        self._batch = batch
        # The last turn stopped at its cap with rows still to go (the worker comes back soon).
        self.behind = False

    async def _batch_of(self, statement: str, params: dict[str, Any]) -> int:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(RETENTION_SCOPE)
                cursor = await conn.execute(statement, {**params, "limit": self._batch})
                return int(cursor.rowcount)
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc

    async def _all(self, statement: str, params: dict[str, Any], max_batches: int) -> int:
        total = 0
        for _ in range(max_batches):
            done = await self._batch_of(statement, params)
            total += done
            if done < self._batch:
                return total
        self.behind = True
        return total

    async def prune(self, max_batches: int = 100, now: datetime | None = None) -> dict[str, int]:
        """One turn: rows deleted or emptied, by kind (each kind at most `max_batches`). Ages
        are counted to `now` (None: the database's time; a simulated month binds its own)."""
        delete_after = max(self._payload_days, DEDUP_DAYS)
        self.behind = False
        done = {
            "deliveries_deleted": await self._all(
                DELETE_DELIVERIES, {"days": delete_after, "now": now}, max_batches
            ),
            "payloads_emptied": 0,
            "oauth_states_deleted": await self._all(DELETE_STATES, {"now": now}, max_batches),
        }
        if self._payload_days < DEDUP_DAYS:
            done["payloads_emptied"] = await self._all(
                STRIP_PAYLOADS, {"days": self._payload_days, "now": now}, max_batches
            )
        return done
