"""Benchmark 7: the worker at scale (issue 15). Part one, here: what one claim costs the database
at 1,000 and at 1,000,000 connections, for the claim of migrations/0014 (an index on the stored
`due_at`) and, on the very same rows, for the claim it replaced (ordered by an expression no
index matches), the reference of the same run. Part two (worker_day.py): a day of Calendly time
over 10,000 connections, calls and detection times, beside the old defaults.

The rows are loaded with SQL into an embedded Postgres (maintenance rows only: the claim reads
nothing else), spread as idle connections are: each kind of work due at a random moment of its
interval (a grant check within a day, a subscription check and a reconciliation within a week,
the token's expiry within two hours), plus a few hundred due now. One claim is the worker's own
statement (8 rows, as 2 workers of 4 slots claim), run under EXPLAIN ANALYZE in a transaction
that is rolled back: its "Execution Time" is the database's time, and every sample sees the
same rows.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from adapters.postgres.maintenance import CLAIM
from benchmarks import worker_day
from benchmarks.stack import stack

# The claim before migrations/0014: proactive refreshes a margin ahead of the token's expiry,
# ordered by the soonest of three expressions, which no index can serve.
OLD_CLAIM = """
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
RETURNING m.connection_id
"""

LOAD = """
INSERT INTO connection_maintenance (connection_id, user_id, refresh_due, grant_due,
                                    subscription_due, sync_due, synced_at, webhooks)
SELECT gen_random_uuid(), 'bulk-' || g,
       now() + random() * interval '2 hours',
       CASE WHEN g <= %(due_now)s::int THEN now() - random() * interval '1 minute'
            ELSE now() + random() * interval '1 day' END,
       now() + random() * interval '7 days',
       now() + random() * interval '7 days',
       now() - random() * interval '7 days', true
FROM generate_series(%(first)s::int, %(last)s::int) g
"""


@dataclass
class Config:
    sizes: tuple[int, ...] = (1_000, 1_000_000)
    samples: int = 300
    warmup: int = 20
    due_now: int = 500
    limit: int = 8
    # The day of Calendly time (part two); None: the claim alone.
    day: worker_day.DayConfig | None = field(default_factory=worker_day.DayConfig)


def _execution_ms(conn: psycopg.Connection[Any], statement: str, params: dict[str, Any]) -> float:
    with conn.transaction(force_rollback=True), psycopg.ClientCursor(conn) as cursor:
        cursor.execute(("EXPLAIN (ANALYZE, FORMAT JSON) " + statement).encode(), params)
        row = cursor.fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    return float(plan[0]["Execution Time"])


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _measure(conn: psycopg.Connection[Any], cfg: Config) -> dict[str, Any]:
    new = {"owner": "bench", "limit": cfg.limit, "lease": timedelta(minutes=2)}
    old = {**new, "margin": timedelta(minutes=5)}
    figures: dict[str, Any] = {}
    for name, statement, params in (("new", CLAIM, new), ("old", OLD_CLAIM, old)):
        for _ in range(cfg.warmup):  # caches as a running worker has them
            _execution_ms(conn, statement, {**params, "now": datetime.now(tz=UTC)})
        samples = []
        for _ in range(cfg.samples):
            # `now` is the worker's clock, bound per claim (the old claim read the database's)
            samples.append(_execution_ms(conn, statement, {**params, "now": datetime.now(tz=UTC)}))
        figures[name] = {
            "p50_ms": round(statistics.median(samples), 3),
            "p99_ms": round(_p(samples, 0.99), 3),
        }
    return figures


def run(cfg: Config | None = None, log: Any = print) -> dict[str, Any]:
    cfg = cfg or Config()
    results: dict[str, Any] = {"samples": cfg.samples, "limit": cfg.limit, "sizes": {}}
    with stack("worker") as s, psycopg.connect(s.admin_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # bulk rows: no FK to check
        loaded = 0
        for size in sorted(cfg.sizes):
            started = time.monotonic()
            conn.execute(
                LOAD.encode(),
                {"first": loaded + 1, "last": size, "due_now": cfg.due_now},
            )
            loaded = size
            conn.execute("VACUUM ANALYZE connection_maintenance")
            load_seconds = time.monotonic() - started
            figures = _measure(conn, cfg)
            results["sizes"][str(size)] = {**figures, "load_seconds": round(load_seconds, 1)}
            log(
                f"  {size:,} connections: claim p99 {figures['new']['p99_ms']:.2f} ms"
                f" (before migration 0014: {figures['old']['p99_ms']:.2f} ms)"
            )
    small, large = (results["sizes"][str(n)] for n in (min(cfg.sizes), max(cfg.sizes)))
    results["claim_p99_ratio"] = round(large["new"]["p99_ms"] / small["new"]["p99_ms"], 2)
    results["old_claim_p99_ratio"] = round(large["old"]["p99_ms"] / small["old"]["p99_ms"], 2)
    if cfg.day is not None:
        day = worker_day.run(cfg.day, log)
        results["day"] = day
        results["calls_per_idle_connection_per_day"] = day["calls_per_idle_connection_per_day"]
        results["detection_seconds"] = day["detection_seconds"]
        results["ok"] = day["ok"]
        if not day["ok"]:
            results["problems"] = day.get("problems")
    return results
