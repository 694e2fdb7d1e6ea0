"""What `/metrics` reports from the database: three counts in one READ ONLY transaction.

Read across tenants with the host scope (the exception of DR-30), but only aggregates leave
it: counts per connection status, undelivered changes per host webhook endpoint, and the age
of the oldest due maintenance. No user id, no secret column. Asked at scrape time only, and
the exporter reuses the answer for a few seconds (DR-39).
"""

from __future__ import annotations

from typing import Any, Final

import psycopg_pool

from adapters.prometheus import DatabaseReadings
from domain.errors import StorageUnavailable

from .directory import HOST_SCOPE, READ_ONLY
from .unit_of_work import UNAVAILABLE

Pool = psycopg_pool.AsyncConnectionPool[Any]

CONNECTIONS_BY_STATUS: Final = """
SELECT status, count(*)::bigint AS n FROM calendar_connections
WHERE provider = 'calendly' GROUP BY status
"""
HOST_WEBHOOK_BACKLOG: Final = """
SELECT endpoint, sum(head_seq - sent_seq)::bigint AS n FROM host_webhook_streams
WHERE sent_seq < head_seq GROUP BY endpoint
"""
# The claim's own notion of "due" (adapters/postgres/maintenance.py): `due_at` passed (it
# already waits for back-offs and leases); read on the claim's index.
WORKER_LAG: Final = """
SELECT coalesce(extract(epoch FROM now() - min(due_at)), 0)::float8 AS seconds
FROM connection_maintenance WHERE due_at <= now()
"""


class PostgresReadings:
    """Its own short READ ONLY transaction, with the host scope and no tenant."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def __call__(self) -> DatabaseReadings:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                async with conn.pipeline():
                    await conn.execute(READ_ONLY)
                    await conn.execute(HOST_SCOPE)
                    by_status = await conn.execute(CONNECTIONS_BY_STATUS)
                    backlog = await conn.execute(HOST_WEBHOOK_BACKLOG)
                    lag = await conn.execute(WORKER_LAG)
                statuses = await by_status.fetchall()
                endpoints = await backlog.fetchall()
                lag_row = await lag.fetchone()
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database cannot be reached") from exc
        return DatabaseReadings(
            connections={str(row["status"]): int(row["n"]) for row in statuses},
            host_webhook_backlog={str(row["endpoint"]): int(row["n"]) for row in endpoints},
            worker_lag_seconds=max(0.0, float(lag_row["seconds"])) if lag_row else 0.0,
        )
