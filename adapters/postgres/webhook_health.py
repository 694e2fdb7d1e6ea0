"""The webhook endpoint's own record of its health, and the sweep after an outage (DR-45).

Calendly retries a failed delivery for a day, then disables the subscription for good and
tells nobody. This service knows when it failed Calendly: every serving process beats every
few seconds (`beat`), saying it takes deliveries and, if it answered any with a 5xx, since
when. A gap in the beats (no process answered, or none could reach the database) or a 5xx
becomes a `webhook_outages` row (migrations/0014). Once the endpoint has been healthy for a
while after it, a worker sweeps it (`sweep`): every connection whose webhooks worked has its
subscription checked and its meetings reconciled soon, spread over a few minutes, in batches
of a few thousand rows a statement. Tables of times and ids only, shared by every process.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

import psycopg_pool

from domain.errors import StorageUnavailable

from .unit_of_work import UNAVAILABLE

Pool = psycopg_pool.AsyncConnectionPool[Any]

# The row is created by the first beat ever (no outage before it: nothing was connected).
FIRST_BEAT: Final = """
INSERT INTO webhook_health (healthy_until) VALUES (%(now)s) ON CONFLICT (only_row) DO NOTHING
"""
LAST_HEALTHY: Final = "SELECT healthy_until FROM webhook_health FOR UPDATE"
# An outage that starts within `gap` of the last one's end is the same outage, grown: its
# sweep (if begun) starts over when it ends.
GROW: Final = """
UPDATE webhook_outages
SET started_at = least(started_at, %(started)s), ended_at = greatest(ended_at, %(ended)s),
    swept_after = NULL, swept_at = NULL
WHERE id = (SELECT max(id) FROM webhook_outages) AND ended_at >= %(started)s - %(gap)s
"""
RECORD: Final = """
INSERT INTO webhook_outages (started_at, ended_at, cause)
VALUES (%(started)s, %(ended)s, %(cause)s)
"""
HEALTHY: Final = """
UPDATE webhook_health SET healthy_until = greatest(healthy_until, %(now)s)
"""
# One batch of an ended outage's sweep: the next `batch` connections with webhooks (by id, from
# where the last batch stopped) are due for a subscription check and a reconciliation at a
# random moment of the next `spread` (sooner only: a check due earlier stays). The outage is
# done when a batch comes back short. SKIP LOCKED: two workers never sweep the same outage.
SWEEP: Final = """
WITH outage AS (
    SELECT id, swept_after FROM webhook_outages
    WHERE swept_at IS NULL AND ended_at <= %(now)s - %(settle)s
    ORDER BY ended_at LIMIT 1
    FOR UPDATE SKIP LOCKED
), batch AS (
    SELECT m.connection_id, %(now)s + random() * %(spread)s AS due
    FROM connection_maintenance m, outage
    WHERE m.webhooks
      AND m.connection_id > coalesce(outage.swept_after, '00000000-0000-0000-0000-000000000000')
    ORDER BY m.connection_id
    LIMIT %(batch)s
), swept AS (
    UPDATE connection_maintenance m
    SET subscription_due = least(m.subscription_due, batch.due),
        sync_due = least(m.sync_due, batch.due)
    FROM batch WHERE m.connection_id = batch.connection_id
    RETURNING m.connection_id
)
UPDATE webhook_outages o
SET swept_after = coalesce(
        (SELECT connection_id FROM swept ORDER BY connection_id DESC LIMIT 1), o.swept_after),
    swept_at = CASE WHEN (SELECT count(*) FROM swept) < %(batch)s THEN %(now)s END
FROM outage WHERE o.id = outage.id
RETURNING (SELECT count(*) FROM swept)::int AS swept
"""


class PostgresWebhookHealth:
    """Beats from serving processes, sweeps from workers: each its own short transaction."""

    def __init__(
        self,
        pool: Pool,
        *,
        gap: timedelta = timedelta(seconds=30),
        settle: timedelta = timedelta(seconds=60),
        spread: timedelta = timedelta(minutes=5),
        batch: int = 5_000,
    ) -> None:
        self._pool = pool
        self._gap = gap
        self._settle = settle
        self._spread = spread
        self._batch = batch

    async def beat(self, now: datetime, failed_since: datetime | None = None) -> bool:
        """This process takes deliveries at `now`; it answered a 5xx at `failed_since` (and
        maybe later) if given. True when this beat recorded (or grew) an outage."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(FIRST_BEAT, {"now": now})
                cursor = await conn.execute(LAST_HEALTHY)
                row = await cursor.fetchone()
                healthy_until: datetime = row["healthy_until"] if row else now
                started: datetime | None = None
                cause = "errors"
                if healthy_until < now - self._gap:
                    started, cause = healthy_until, "unreachable"
                if failed_since is not None:
                    started = failed_since if started is None else min(started, failed_since)
                if started is not None:
                    params = {"started": started, "ended": now, "gap": self._gap, "cause": cause}
                    grown = await conn.execute(GROW, params)
                    if not grown.rowcount:
                        await conn.execute(RECORD, params)
                await conn.execute(HEALTHY, {"now": now})
                return started is not None
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc

    async def sweep(self, now: datetime) -> int:
        """One batch of the oldest ended outage's sweep; how many connections it made due."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                SWEEP,
                {"now": now, "settle": self._settle, "spread": self._spread, "batch": self._batch},
            )
            row = await cursor.fetchone()
        return int(row["swept"]) if row else 0
