"""The webhook endpoint's own record of its health, and the sweep after an outage (DR-45).

Calendly retries a failed delivery for a day (or until a day after the booked meeting), then
disables the subscription for good and tells nobody: a subscription can only be disabled at a
delivery's last attempt, and only if we failed it. This service knows when it failed Calendly:
every serving process beats every few seconds (`beat`), saying it takes deliveries and which
connections' deliveries it answered with a 5xx. Those connections are checked a minute later
(their subscription read, their meetings reconciled). A gap in everyone's beats (no process
answered, or none reached the database) or a 5xx on the shared URL (whose connection is not
known) becomes a `webhook_outages` row (migrations/0014): once the endpoint has been healthy
for a while after it, a worker sweeps it (`sweep`), making every connection whose webhooks
worked due for the same, spread over a few minutes, a batch of a few thousand rows at a time.
Tables of times and ids only, shared by every process. Times are the database's unless a
caller binds its own (a simulated day does).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg_pool

from domain.errors import StorageUnavailable

from .unit_of_work import UNAVAILABLE

Pool = psycopg_pool.AsyncConnectionPool[Any]

# A beat of more than this many connections' failures is an outage of all (and past this, a
# beat does not keep their names).
MAX_FAILED_CONNECTIONS: Final = 1_000
NOW: Final = "coalesce(%(now)s::timestamptz, now())"
# The row is created by the first beat ever (no outage before it: nothing was connected).
FIRST_BEAT: Final = f"""
INSERT INTO webhook_health (healthy_until) VALUES ({NOW}) ON CONFLICT (only_row) DO NOTHING
"""  # noqa: S608 - constants of this module, no input
LAST_HEALTHY: Final = f"SELECT healthy_until, {NOW} AS now FROM webhook_health FOR UPDATE"  # noqa: S608
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
HEALTHY: Final = "UPDATE webhook_health SET healthy_until = greatest(healthy_until, %(now)s)"
# The connections whose deliveries were answered with a 5xx: checked and reconciled once the
# endpoint has been healthy for `settle` (sooner only).
# A row a worker holds gets the time outright (as in SWEEP below), so its completion keeps it.
CHECK_FAILED: Final = """
UPDATE connection_maintenance m
SET subscription_due = CASE WHEN m.lease_until > %(at)s THEN %(due)s
                            ELSE least(m.subscription_due, %(due)s) END,
    sync_due = CASE WHEN m.lease_until > %(at)s THEN %(due)s ELSE least(m.sync_due, %(due)s) END
FROM calendly_webhook_routes r
WHERE r.webhook_token = ANY(%(tokens)s) AND m.connection_id = r.connection_id
"""
# One batch of an ended outage's sweep: the next `batch` connections with webhooks (by id, from
# where the last batch stopped) are due for a subscription check and a reconciliation at a
# random moment of the next `spread` (sooner only: a check due earlier stays; a row a worker
# holds gets the new time whatever it was, so that its pass's completion keeps it). The outage
# is done when the batch it picked comes back short; its cursor is the batch's last id (a row
# deleted meanwhile does not end the sweep). SKIP LOCKED: two workers never sweep one outage.
SWEEP: Final = f"""
WITH outage AS (
    SELECT id, swept_after FROM webhook_outages
    WHERE swept_at IS NULL AND ended_at <= {NOW} - %(settle)s
    ORDER BY ended_at LIMIT 1
    FOR UPDATE SKIP LOCKED
), batch AS (
    SELECT m.connection_id, {NOW} + random() * %(spread)s AS due
    FROM connection_maintenance m, outage
    WHERE m.webhooks
      AND m.connection_id > coalesce(outage.swept_after, '00000000-0000-0000-0000-000000000000')
    ORDER BY m.connection_id
    LIMIT %(batch)s
), swept AS (
    UPDATE connection_maintenance m
    SET subscription_due = CASE WHEN m.lease_until > {NOW} THEN batch.due
                                ELSE least(m.subscription_due, batch.due) END,
        sync_due = CASE WHEN m.lease_until > {NOW} THEN batch.due
                        ELSE least(m.sync_due, batch.due) END
    FROM batch WHERE m.connection_id = batch.connection_id
    RETURNING m.connection_id
)
UPDATE webhook_outages o
SET swept_after = coalesce(
        (SELECT connection_id FROM batch ORDER BY connection_id DESC LIMIT 1), o.swept_after),
    swept_at = CASE WHEN (SELECT count(*) FROM batch) < %(batch)s THEN {NOW} END
FROM outage WHERE o.id = outage.id
RETURNING (SELECT count(*) FROM swept)::int AS swept
"""  # noqa: S608 - constants of this module, no input


@dataclass(frozen=True)
class FailedDeliveries:
    """What a serving process answered with a 5xx since its last beat."""

    since: datetime
    # The connections' callback tokens (their own URLs); `unknown`: some came to the shared
    # URL, or more than MAX_FAILED_CONNECTIONS did: then it is an outage of all.
    tokens: Collection[str] = ()
    unknown: bool = False


class PostgresWebhookHealth:
    """Beats from serving processes, sweeps from workers: each its own short transaction."""

    def __init__(
        self,
        pool: Pool,
        *,
        gap: timedelta = timedelta(seconds=60),
        settle: timedelta = timedelta(seconds=60),
        spread: timedelta = timedelta(minutes=5),
        batch: int = 5_000,
    ) -> None:
        self._pool = pool
        self._gap = gap
        self._settle = settle
        self._spread = spread
        self._batch = batch

    async def beat(
        self, failed: FailedDeliveries | None = None, *, now: datetime | None = None
    ) -> bool:
        """This process takes deliveries (at `now`, else the database's time); `failed` says
        what it answered with a 5xx since its last beat. True when this beat recorded (or
        grew) an outage of all; the connections named in `failed` are checked either way."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(FIRST_BEAT, {"now": now})
                cursor = await conn.execute(LAST_HEALTHY, {"now": now})
                row = await cursor.fetchone()
                assert row is not None  # FIRST_BEAT made sure of it
                healthy_until: datetime = row["healthy_until"]
                at: datetime = row["now"]
                started: datetime | None = None
                cause = "errors"
                if healthy_until < at - self._gap:
                    started, cause = healthy_until, "unreachable"
                if failed is not None and (
                    failed.unknown or len(failed.tokens) > MAX_FAILED_CONNECTIONS
                ):
                    since = min(failed.since, at)  # a process clock ahead of the database's
                    started = since if started is None else min(started, since)
                elif failed is not None and failed.tokens:
                    await conn.execute(
                        CHECK_FAILED,
                        {"tokens": list(failed.tokens), "due": at + self._settle, "at": at},
                    )
                if started is not None:
                    params = {"started": started, "ended": at, "gap": self._gap, "cause": cause}
                    grown = await conn.execute(GROW, params)
                    if not grown.rowcount:
                        await conn.execute(RECORD, params)
                await conn.execute(HEALTHY, {"now": at})
                return started is not None
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc

    async def sweep(self, now: datetime | None = None) -> int:
        """One batch of the oldest ended outage's sweep; how many connections it made due."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                SWEEP,
                {"now": now, "settle": self._settle, "spread": self._spread, "batch": self._batch},
            )
            row = await cursor.fetchone()
        return int(row["swept"]) if row else 0
