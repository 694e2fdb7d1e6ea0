"""Benchmark 8: storage under continuous ingest (issue 15 item 5). Sixty days of deliveries at a
steady rate, written with SQL as the webhook path writes them (one recorded delivery each, with
a payload the size of Calendly's invitee.created, and an OAuth state for every 20), day by day;
after each day the worker's own pruning (adapters/postgres/storage_retention.py, the defaults:
30 days of payloads, 1,000 rows a batch) runs with its clock at the day's end, then VACUUM, as
autovacuum would within a day. The size of what ingest adds (the delivery log and the OAuth
states, tables and indexes) is read every day: it must stop growing once the retention is full.
A second, shorter run keeps payloads 1 day: they are emptied first (an UPDATE) and the rows
deleted after the 3-day dedup window.
Meetings are the users' data and are kept: they grow with bookings, not with deliveries.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import psycopg_pool

from adapters.postgres.storage_retention import DEDUP_DAYS, PostgresStorageRetention
from benchmarks.stack import stack

# About the size of a real invitee.created body (API_FACTS 4.1).
PAYLOAD = json.dumps(
    {
        "event": "invitee.created",
        "created_at": "2024-03-01T10:05:00.000000Z",
        "created_by": "https://api.calendly.com/users/7b2d1e3c-5f0a-4a51-9a3e-0c6f2d9b8e11",
        "payload": {
            "uri": "https://api.calendly.com/scheduled_events/0e8b/invitees/4d2a",
            "email": "grace@example.org",
            "name": "Grace Guest",
            "status": "active",
            "timezone": "America/New_York",
            "questions_and_answers": [{"question": "Topic?", "answer": "Roadmap", "position": 0}],
            "cancel_url": "https://calendly.com/cancellations/4d2a",
            "reschedule_url": "https://calendly.com/reschedulings/4d2a",
            "scheduled_event": {
                "uri": "https://api.calendly.com/scheduled_events/0e8b",
                "name": "30 Minute Meeting",
                "start_time": "2024-03-05T14:30:00.000000Z",
                "end_time": "2024-03-05T15:00:00.000000Z",
                "location": {"type": "zoom", "join_url": "https://zoom.example/j/1"},
                "event_memberships": [
                    {
                        "user": "https://api.calendly.com/users/7b2d1e3c",
                        "user_email": "ada@example.com",
                        "user_name": "Ada Host",
                    }
                ],
            },
        },
    }
)
INGEST_DAY = """
INSERT INTO calendly_webhook_events (event_id, event_type, payload, created_at, processed_at,
                                     user_id, outcome)
SELECT 'bench:' || %(day)s || ':' || g, 'invitee.created', %(payload)s::jsonb,
       %(start)s + (g::float8 / %(per_day)s) * interval '1 day',
       %(start)s + (g::float8 / %(per_day)s) * interval '1 day',
       'user-' || (g %% 1000), 'applied'
FROM generate_series(1, %(per_day)s) g
"""
STATES_DAY = """
INSERT INTO calendly_oauth_states (state, user_id, code_verifier_enc, created_at, expires_at)
SELECT 'bench:' || %(day)s || ':' || g, 'user-' || g, '\\x01'::bytea,
       %(start)s + (g::float8 / %(states)s) * interval '1 day',
       %(start)s + (g::float8 / %(states)s) * interval '1 day' + interval '10 minutes'
FROM generate_series(1, %(states)s) g
"""
SIZE = """
SELECT (pg_total_relation_size('calendly_webhook_events')
        + pg_total_relation_size('calendly_oauth_states'))::float8 / 1048576,
       (SELECT count(*) FROM calendly_webhook_events)
"""


@dataclass
class Config:
    days: int = 60
    per_day: int = 10_000
    payload_days: int = 30


def run(cfg: Config | None = None, log: Any = print) -> dict[str, Any]:
    """The default retention (30 days), and beside it a 1-day one, whose payloads are emptied
    first and rows deleted after the 3-day dedup window (the UPDATE path, the likelier to
    bloat)."""
    cfg = cfg or Config()
    results = _scenario(cfg, log)
    short = Config(days=12, per_day=cfg.per_day, payload_days=1)
    results["short_retention"] = _scenario(short, log)
    results["ok"] = results["ok"] and results["short_retention"]["ok"]
    return results


def _scenario(cfg: Config, log: Any) -> dict[str, Any]:
    sizes: list[float] = []
    rows: list[int] = []
    prune_seconds: list[float] = []
    with stack("storage") as s:
        start = datetime(2030, 1, 1, tzinfo=UTC)
        with psycopg.connect(s.admin_url, autocommit=True) as conn:
            for day in range(cfg.days):
                at = start + timedelta(days=day)
                params = {"day": day, "start": at, "per_day": cfg.per_day, "payload": PAYLOAD}
                conn.execute(INGEST_DAY, params)
                conn.execute(STATES_DAY, {"day": day, "start": at, "states": cfg.per_day // 20})
                started = time.monotonic()
                asyncio.run(_prune(s.admin_url, cfg, at + timedelta(days=1)))
                prune_seconds.append(time.monotonic() - started)
                conn.execute("VACUUM calendly_webhook_events, calendly_oauth_states")
                size, count = conn.execute(SIZE).fetchone() or (0.0, 0)
                sizes.append(round(float(size), 1))
                rows.append(int(count))
                if day % 10 == 9:
                    log(f"  day {day + 1}: {size:.0f} MB, {count:,} recorded deliveries")
    kept_days = max(cfg.payload_days, DEDUP_DAYS)
    full = kept_days + 1  # the first day the retention is full
    after = sizes[full - 1 :]
    results: dict[str, Any] = {
        "days": cfg.days,
        "per_day": cfg.per_day,
        "payload_days": cfg.payload_days,
        "full_on_day": full,
        "mb_by_day": sizes,
        "rows_by_day": rows,
        "mb_when_full": sizes[full - 1],
        "mb_at_end": sizes[-1],
        "growth_after_full": round(max(after) / sizes[full - 1], 3),
        "prune_seconds_max": round(max(prune_seconds), 2),
        # The slowest day's: a day's deliveries (and OAuth states) over its pruning time.
        "prune_rows_per_second_worst_day": round(
            cfg.per_day * 1.05 / max(prune_seconds[full:] or [1.0]), 0
        ),
    }
    results["ok"] = rows[-1] <= cfg.per_day * (kept_days + 1)
    if not results["ok"]:
        results["problems"] = [f"{rows[-1]:,} deliveries kept after {cfg.days} days"]
    return results


async def _prune(url: str, cfg: Config, now: datetime) -> None:
    """The worker's turns at the day's end (each up to its cap, again while behind)."""
    async with psycopg_pool.AsyncConnectionPool(
        url, min_size=1, max_size=1, open=False, kwargs={"autocommit": True}
    ) as pool:
        await pool.wait()
        retention = PostgresStorageRetention(pool, payload_days=cfg.payload_days)
        while True:
            await retention.prune(now=now)
            if not retention.behind:
                break
