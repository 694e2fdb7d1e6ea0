"""Benchmark 4: cost as data grows. Two stacks side by side, one with 100 connections and 1,000
meetings, one with 100,000 connections and 1,000,000 meetings (each with its invitee and its
recorded delivery), loaded with SQL. The users driven are real connections made through the API
(their tokens decrypt); every connection, theirs included, has 10 meetings. The same short load
runs on both in alternation: signed deliveries (the ingest mix) and `GET /api/meetings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.deliveries import make_mix
from benchmarks.load import median, wrk
from benchmarks.stack import Stack, User, stack

MEETINGS_PER_CONNECTION = 10


@dataclass
class Config:
    small_connections: int = 100
    large_connections: int = 100_000
    driven_users: int = 20
    connections: int = 8  # the load generator's: a steady load, not a saturating one
    seconds: int = 10
    repeats: int = 3
    processes: int = 2


LOAD = [
    "SET session_replication_role = replica",  # bulk rows need no triggers, no FK checks
    "SET synchronous_commit = off",
    """
INSERT INTO calendar_connections (
    id, user_id, status, calendly_user_uri, calendly_organization_uri, provider_account_email,
    calendly_user_name, access_token_enc, refresh_token_enc, token_expires_at, webhook_status,
    webhook_subscription_uri, webhook_signing_key_enc, webhook_token)
SELECT gen_random_uuid(), 'bulk-' || g, 'active', 'https://api.calendly.test/users/bulk-' || g,
       'https://api.calendly.test/organizations/bulk', 'bulk-' || g || '@bulk.example',
       'Bulk ' || g, '\\x00'::bytea, '\\x00'::bytea, now() + interval '2 hours', 'active',
       'https://api.calendly.test/webhook_subscriptions/bulk-' || g, '\\x00'::bytea,
       'bulk-token-' || g
FROM generate_series(1, %(bulk)s) g
""",
    """
INSERT INTO calendly_webhook_routes (webhook_token, calendly_user_uri, user_id, connection_id)
SELECT webhook_token, calendly_user_uri, user_id, id FROM calendar_connections
WHERE user_id LIKE 'bulk-%%'
""",
    """
INSERT INTO connection_maintenance (connection_id, user_id, refresh_due, subscription_due, sync_due)
SELECT id, user_id, token_expires_at - interval '5 minutes', now() + interval '1 day',
       now() + interval '1 day'
FROM calendar_connections WHERE user_id LIKE 'bulk-%%'
""",
    f"""
INSERT INTO meetings (user_id, connection_id, event_uri, name, start_time, end_time, status,
                      location, change_seq)
SELECT c.user_id, c.id, 'https://api.calendly.test/scheduled_events/' || c.user_id || '-m' || k,
       '30 Minute Meeting', timestamptz '2030-01-01 09:00Z' + k * interval '1 day',
       timestamptz '2030-01-01 09:30Z' + k * interval '1 day', 'active',
       '{{"type": "zoom", "join_url": "https://zoom.example/j/1"}}',
       k  -- per user, as the service would number them (the counters follow below)
FROM calendar_connections c, generate_series(1, {MEETINGS_PER_CONNECTION}) k
""",  # noqa: S608 - a constant of this module, no input
    """
INSERT INTO meeting_change_users (user_id, last_seq)
SELECT user_id, max(change_seq) FROM meetings GROUP BY user_id
ON CONFLICT (user_id) DO UPDATE SET last_seq = greatest(meeting_change_users.last_seq,
                                                      EXCLUDED.last_seq)
""",
    """
INSERT INTO meeting_invitees (user_id, connection_id, meeting_id, invitee_uri, email, name,
                              timezone, status)
SELECT user_id, connection_id, id, event_uri || '/invitees/i', 'guest@guest.example', 'Guest',
       'Europe/Berlin', 'active'
FROM meetings
""",
    """
INSERT INTO calendly_webhook_events (event_id, event_type, payload, user_id, connection_id,
                                     outcome)
SELECT connection_id || ':invitee.created:' || invitee_uri, 'invitee.created',
       jsonb_build_object('event', 'invitee.created', 'payload', jsonb_build_object(
           'uri', invitee_uri, 'email', email, 'name', name)),
       user_id, connection_id, 'applied'
FROM meeting_invitees
""",
    "RESET session_replication_role",
]


def load(s: Stack, connections: int, real: int) -> float:
    started = time.monotonic()
    import psycopg

    with psycopg.connect(s.admin_url, autocommit=True) as conn:
        for statement in LOAD:
            conn.execute(statement, {"bulk": connections - real})
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")  # not in the middle of a measured run
    return time.monotonic() - started


def list_requests(s: Stack, users: list[User], path: Path) -> None:
    host = s.url.removeprefix("http://")
    with path.open("wb") as out:
        for u in users:
            raw = (
                f"GET /api/meetings HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {u.token}\r\nX-Request-Id: list-{u.user_id}\r\n\r\n"
            ).encode()
            out.write(f"{len(raw)}\n".encode())
            out.write(raw)


def one_run(s: Stack, users: list[User], cfg: Config, tag: str) -> dict[str, Any]:
    mix = make_mix(users, 3000 * cfg.seconds, tag)
    hooks = s.workdir / "hooks.requests"
    mix.write(hooks, s.url.removeprefix("http://"))
    webhook = wrk(s.url, hooks, connections=cfg.connections, seconds=cfg.seconds)
    s.settle()
    lists = s.workdir / "lists.requests"
    list_requests(s, users, lists)
    listing = wrk(s.url, lists, connections=cfg.connections, seconds=cfg.seconds)
    ok = (
        webhook.error_count == 0
        and set(webhook.statuses) == {"200"}
        and listing.error_count == 0
        and set(listing.statuses) == {"200"}
        and webhook.wraps == 0
    )
    return {
        "webhook_p99_ms": webhook.p99_ms,
        "webhook_p50_ms": webhook.p50_ms,
        "webhook_rate": webhook.rate,
        "list_p99_ms": listing.p99_ms,
        "list_p50_ms": listing.p50_ms,
        "list_rate": listing.rate,
        "ok": ok,
        "statuses": {"webhook": webhook.statuses, "list": listing.statuses},
    }


def run(cfg: Config, log: Any = print) -> dict[str, Any]:
    sizes = {"small": cfg.small_connections, "large": cfg.large_connections}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sizes}
    facts: dict[str, Any] = {}
    with contextlib.ExitStack() as stacks:
        built: dict[str, tuple[Stack, list[User]]] = {}
        for name, connections in sizes.items():
            s = stacks.enter_context(stack(f"growth-{name}"))
            s.start_services(cfg.processes)
            ids = [f"{name}-user{n}" for n in range(cfg.driven_users)]
            users = asyncio.run(s.connect_users(ids))
            seconds = load(s, connections, cfg.driven_users)
            counts = s.sql(
                "SELECT (SELECT count(*) FROM calendar_connections),"
                " (SELECT count(*) FROM meetings), (SELECT count(*) FROM meeting_invitees),"
                " (SELECT count(*) FROM calendly_webhook_events),"
                " pg_size_pretty(pg_database_size(current_database()))"
            )[0]
            facts[name] = {
                "connections": counts[0],
                "meetings": counts[1],
                "invitees": counts[2],
                "events": counts[3],
                "database_size": counts[4],
                "load_seconds": round(seconds, 1),
            }
            log(f"  {name}: {facts[name]}")
            built[name] = (s, users)
        for repeat in range(cfg.repeats):
            for name, (s, users) in built.items():
                figures = one_run(s, users, cfg, f"{name}{repeat}")
                runs[name].append(figures)
                log(
                    f"  {name}, run {repeat + 1}: webhook p99 {figures['webhook_p99_ms']:.1f} ms,"
                    f" list p99 {figures['list_p99_ms']:.1f} ms"
                )
    summary: dict[str, Any] = {"sizes": facts, "connections": cfg.connections}
    for name, items in runs.items():
        summary[name] = {
            key: median([i[key] for i in items])
            for key in (
                "webhook_p99_ms",
                "webhook_p50_ms",
                "webhook_rate",
                "list_p99_ms",
                "list_p50_ms",
                "list_rate",
            )
        }
        summary[name]["ok"] = all(i["ok"] for i in items)
        summary[name]["runs"] = items
    small, large = summary["small"], summary["large"]
    summary["webhook_ratio"] = large["webhook_p99_ms"] / small["webhook_p99_ms"]
    summary["list_ratio"] = large["list_p99_ms"] / small["list_p99_ms"]
    summary["ok"] = small["ok"] and large["ok"]
    return summary
