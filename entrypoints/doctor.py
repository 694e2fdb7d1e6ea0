"""`calendly-connect doctor`: the deployment checklist as one command, with a fix per finding."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

Status = Literal["pass", "warn", "fail"]
ROLE_CHECK = """
SELECT r.rolsuper, r.rolbypassrls,
       (SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid AND c.relkind IN ('r', 'p')
          AND c.relnamespace = 'public'::regnamespace) AS owned
FROM pg_roles r WHERE r.rolname = %s
"""


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class Context:
    environ: Mapping[str, str]
    conn: psycopg.Connection[Any] | None = None
    sees_all_tenants: bool = False


def check_configuration(ctx: Context) -> Finding:
    from entrypoints.settings import ConfigError, load_settings

    try:
        load_settings(ctx.environ)
    except ConfigError as exc:
        return Finding(
            "configuration",
            "fail",
            f"{len(exc.problems)} problem(s): " + "; ".join(exc.problems),
            "set the variables as described (see .env.example and README, Configuration)",
        )
    return Finding("configuration", "pass", "every variable is set and well-formed")


def check_signing_key(ctx: Context) -> Finding:
    keys = [k for k in ctx.environ.get("CALENDLY_WEBHOOK_SIGNING_KEY", "").split(",") if k.strip()]
    if not keys:
        return Finding(
            "webhook signing key",
            "fail",
            "CALENDLY_WEBHOOK_SIGNING_KEY is not set: deliveries signed with the app key fail",
            "copy the signing key Calendly showed when the OAuth app was created",
        )
    return Finding("webhook signing key", "pass", f"{len(keys)} key(s) configured")


def check_database(ctx: Context) -> Finding:
    name = "DOCTOR_DATABASE_URL" if ctx.environ.get("DOCTOR_DATABASE_URL") else "DATABASE_URL"
    url = ctx.environ.get(name)
    if not url:
        return Finding("database reachable", "fail", "DATABASE_URL is not set", "set DATABASE_URL")
    from entrypoints.settings import database_url_problem

    # libpq's own complaint about a malformed URL quotes it, password and all.
    if (problem := database_url_problem(url, name)) is not None:
        return Finding("database reachable", "fail", problem, f"correct {name}")
    try:
        ctx.conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        message = exc.args[0] if exc.args else type(exc).__name__
        return Finding(
            "database reachable",
            "fail",
            f"cannot connect: {str(message).splitlines()[0]}",
            "check DATABASE_URL, that Postgres runs, and that this machine may reach it",
        )
    row = ctx.conn.execute(ROLE_CHECK, (ctx.conn.info.user,)).fetchone()
    ctx.sees_all_tenants = bool(row and (row[0] or row[1]))
    return Finding("database reachable", "pass", f"connected as {ctx.conn.info.user}")


def needs_db(check: Callable[[Context], Finding]) -> Callable[[Context], Finding]:
    name = check.__doc__ or check.__name__

    def run(ctx: Context) -> Finding:
        if ctx.conn is None:
            return Finding(name, "fail", "skipped: no database")
        try:
            return check(ctx)
        except psycopg.Error as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return Finding(name, "fail", f"cannot check: {first}", "run: calendly-connect migrate")

    run.__name__ = check.__name__
    return run


@needs_db
def check_migrations(ctx: Context) -> Finding:
    """migrations applied"""
    from adapters.postgres.migrations import discover

    assert ctx.conn is not None
    table = ctx.conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    done: set[int] = set()
    if table and table[0]:
        done = {r[0] for r in ctx.conn.execute("SELECT version FROM schema_migrations")}
    waiting = [f"{m.version:04d}_{m.name}" for m in discover() if m.version not in done]
    if waiting:
        return Finding(
            "migrations applied",
            "fail",
            f"pending: {', '.join(waiting)}",
            "run: calendly-connect migrate",
        )
    return Finding("migrations applied", "pass", f"{len(done)} applied")


@needs_db
def check_events_table(ctx: Context) -> Finding:
    """webhook events table"""
    assert ctx.conn is not None
    row = ctx.conn.execute("SELECT to_regclass('calendly_webhook_events') IS NOT NULL").fetchone()
    if not (row and row[0]):
        return Finding(
            "webhook events table",
            "fail",
            "calendly_webhook_events is missing: deliveries cannot be deduplicated",
            "run: calendly-connect migrate",
        )
    return Finding("webhook events table", "pass", "calendly_webhook_events is present")


@needs_db
def check_runtime_role(ctx: Context) -> Finding:
    """runtime role bound by RLS"""
    assert ctx.conn is not None
    role = ctx.environ.get("DATABASE_RUNTIME_ROLE") or "calendly_app"
    row = ctx.conn.execute(ROLE_CHECK, (role,)).fetchone()
    if row is None:
        return Finding(
            "runtime role bound by RLS",
            "fail",
            f"the role {role!r} does not exist",
            "run: calendly-connect migrate (it creates the role)",
        )
    problems = [
        text
        for flag, text in (
            (row[0], "is a superuser"),
            (row[1], "has BYPASSRLS"),
            (row[2], "owns tables"),
        )
        if flag
    ]
    if problems:
        return Finding(
            "runtime role bound by RLS",
            "fail",
            f"{role} {' and '.join(problems)}: tenants would not be isolated",
            f"ALTER ROLE {role} NOSUPERUSER NOBYPASSRLS; move table ownership to another role",
        )
    try:
        with ctx.conn.transaction():
            ctx.conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
    except psycopg.Error:
        return Finding(
            "runtime role bound by RLS",
            "fail",
            f"this login cannot SET ROLE {role}",
            f"GRANT {role} TO <the DATABASE_URL user>",
        )
    return Finding("runtime role bound by RLS", "pass", f"{role}: no superuser, no BYPASSRLS")


def _tenant_blind(name: str) -> Finding:
    return Finding(
        name,
        "fail",
        "this login is bound by row-level security and cannot see every tenant",
        "run the doctor with DOCTOR_DATABASE_URL of a role with BYPASSRLS (or a superuser)",
    )


@needs_db
def check_user_uris(ctx: Context) -> Finding:
    """every connection has its Calendly user URI"""
    name = "every connection has its Calendly user URI"
    if not ctx.sees_all_tenants:
        return _tenant_blind(name)
    assert ctx.conn is not None
    rows = ctx.conn.execute(
        "SELECT user_id FROM calendar_connections"
        " WHERE status <> 'disconnected' AND calendly_user_uri IS NULL ORDER BY user_id"
    ).fetchall()
    if rows:
        users = ", ".join(r[0] for r in rows[:10]) + (" ..." if len(rows) > 10 else "")
        return Finding(
            name,
            "fail",
            f"{len(rows)} connection(s) receive no webhooks: {users}",
            "run: calendly-connect repair-connections",
        )
    return Finding(name, "pass", "all connected rows have one")


@needs_db
def check_subscriptions(ctx: Context) -> Finding:
    """subscriptions active"""
    name = "subscriptions active"
    if not ctx.sees_all_tenants:
        return _tenant_blind(name)
    assert ctx.conn is not None
    rows = ctx.conn.execute(
        "SELECT user_id, webhook_status FROM calendar_connections"
        " WHERE status = 'active' AND webhook_status IN ('disabled', 'missing') ORDER BY user_id"
    ).fetchall()
    free = ctx.conn.execute(
        "SELECT count(*) FROM calendar_connections"
        " WHERE status = 'active' AND webhook_status = 'unavailable_plan'"
    ).fetchone()
    polled = f"; {free[0]} free-plan connection(s) are kept in sync by polling" if free else ""
    if rows:
        listed = ", ".join(f"{u} ({s})" for u, s in rows[:10])
        return Finding(
            name,
            "fail",
            f"{len(rows)} without a working subscription: {listed}{polled}",
            "make sure `calendly-connect worker` runs (it repairs them), or "
            "run: calendly-connect repair-connections",
        )
    return Finding(name, "pass", f"every paid-plan connection has one{polled}")


@needs_db
def check_reauth(ctx: Context) -> Finding:
    """connections needing re-authorization"""
    name = "connections needing re-authorization"
    if not ctx.sees_all_tenants:
        return _tenant_blind(name)
    assert ctx.conn is not None
    rows = ctx.conn.execute(
        "SELECT user_id, coalesce(last_error, '') FROM calendar_connections"
        " WHERE status = 'needs_reauth' ORDER BY updated_at DESC"
    ).fetchall()
    if rows:
        listed = ", ".join(f"{u}" for u, _ in rows[:10]) + (" ..." if len(rows) > 10 else "")
        return Finding(
            name,
            "warn",
            f"{len(rows)}: {listed}",
            "their users see a Reconnect banner; only they can approve again at Calendly",
        )
    return Finding(name, "pass", "none")


@needs_db
def check_worker(ctx: Context) -> Finding:
    """maintenance worker running"""
    assert ctx.conn is not None
    table = ctx.conn.execute("SELECT to_regclass('worker_heartbeats') IS NOT NULL").fetchone()
    row = None
    if table and table[0]:
        row = ctx.conn.execute(
            "SELECT count(*) FROM worker_heartbeats WHERE seen_at > now() - interval '2 minutes'"
        ).fetchone()
    if not row or not row[0]:
        return Finding(
            "maintenance worker running",
            "fail",
            "no worker was seen in the last 2 minutes: tokens, subscriptions and free plans "
            "are not looked after",
            "start: calendly-connect worker (any number of them)",
        )
    return Finding("maintenance worker running", "pass", f"{row[0]} worker(s) alive")


# What the worker's most common errors mean, and what to do about each.
MAINTENANCE_FIXES = {
    "DecryptionFailed": "a key id was dropped from TOKEN_ENCRYPTION_KEY: add it back (keep old "
    "keys for decryption, change TOKEN_ENCRYPTION_ACTIVE_KEY to rotate)",
    "CalendlyUnavailable": "Calendly could not be reached or answered 5xx: check the network "
    "and CALENDLY_API_BASE_URL; the worker keeps retrying",
    "RateLimited": "Calendly's rate limit: the worker waits for each reset by itself",
}


@needs_db
def check_maintenance(ctx: Context) -> Finding:
    """connections whose maintenance keeps failing"""
    name = "connections whose maintenance keeps failing"
    assert ctx.conn is not None
    table = ctx.conn.execute(
        "SELECT 1 FROM information_schema.columns"
        " WHERE table_name = 'connection_maintenance' AND column_name = 'retry_at'"
    ).fetchone()
    if table is None:
        return Finding(name, "warn", "not checked: migrations are pending", "run: migrate")
    # The maintenance rows hold ids, times and errors only; every role may read them.
    rows = ctx.conn.execute(
        "SELECT coalesce(last_error, '?'), count(*), max(failures),"
        " to_char(min(retry_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')"
        " FROM connection_maintenance WHERE failures > 0 GROUP BY 1 ORDER BY 2 DESC"
    ).fetchall()
    if not rows:
        return Finding(name, "pass", "none")
    total = sum(n for _, n, _, _ in rows)
    listed = "; ".join(
        f"{n} x {error} (up to {most} failures in a row"
        + (f", next try {first} UTC)" if first else ", due now)")
        for error, n, most, first in rows[:5]
    )
    fixes = [fix for key, fix in MAINTENANCE_FIXES.items() if any(key in e for e, *_ in rows)]
    return Finding(
        name,
        "warn",
        f"{total} connection(s): {listed}",
        "; ".join(fixes)
        or "read the worker's log lines `worker.maintenance_failed` (the first failure of each "
        "connection carries its traceback); each connection is retried with back-off",
    )


@needs_db
def check_unusable(ctx: Context) -> Finding:
    """deliveries stored aside (24 h)"""
    name = "deliveries stored aside (24 h)"
    if not ctx.sees_all_tenants:
        return _tenant_blind(name)
    assert ctx.conn is not None
    rows = ctx.conn.execute(
        "SELECT coalesce(reason, '?'), count(*) FROM calendly_webhook_events"
        " WHERE outcome = 'unusable' AND created_at > now() - interval '1 day'"
        " GROUP BY 1 ORDER BY 2 DESC"
    ).fetchall()
    if rows:
        listed = "; ".join(f"{n} x {reason}" for reason, n in rows[:5])
        return Finding(
            name,
            "warn",
            listed,
            "look at calendly_webhook_events WHERE outcome = 'unusable' (payloads are kept)",
        )
    return Finding(name, "pass", "none")


CHECKS: Sequence[Callable[[Context], Finding]] = (
    check_configuration,
    check_signing_key,
    check_database,
    check_migrations,
    check_events_table,
    check_runtime_role,
    check_user_uris,
    check_subscriptions,
    check_reauth,
    check_worker,
    check_maintenance,
    check_unusable,
)


def run_checks(environ: Mapping[str, str]) -> list[Finding]:
    ctx = Context(environ=environ)
    try:
        return [check(ctx) for check in CHECKS]
    finally:
        if ctx.conn is not None:
            ctx.conn.close()


MARKS = {"pass": "✓", "warn": "!", "fail": "✗"}
# Repair outcomes that leave a row without its URI for a reason a person must look at.
UNREPAIRED = ("conflict", "failed")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="calendly-connect doctor",
        description="Check the deployment: configuration, database, roles, connections, worker.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--strict", action="store_true", help="warnings fail too")
    args = parser.parse_args(argv)
    findings = run_checks(os.environ)
    failed = [f for f in findings if f.status == "fail" or (args.strict and f.status == "warn")]
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(f) for f in findings]}, indent=2))
    else:
        for f in findings:
            print(f"{MARKS[f.status]} {f.check}: {f.detail}")
            if f.status != "pass" and f.fix:
                print(f"    fix: {f.fix}")
        print(f"\n{len(findings) - len(failed)} ok, {len(failed)} to fix")
    return 1 if failed else 0


def repair_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="calendly-connect repair-connections",
        description="Fill in missing Calendly user URIs (refresh the token, read /users/me), "
        "then ensure the subscription. Safe to run twice and while the service runs.",
    )
    parser.add_argument("--dry-run", action="store_true", help="say what would be done")
    args = parser.parse_args(argv)
    from entrypoints.logging import configure_logging, register_secret
    from entrypoints.settings import ConfigError, load_settings

    try:
        settings = load_settings(os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(fmt=settings.log_format, level="WARNING")
    for value in settings.secret_values():
        register_secret(value)
    return asyncio.run(_repair(settings, dry_run=args.dry_run))


async def _repair(settings: Any, *, dry_run: bool) -> int:
    from entrypoints.container import Container, resolve

    container = Container(settings=settings)
    try:
        repair = await resolve(container.repair_connection())
        users = await repair.candidates()
        counts: dict[str, int] = {}
        show_bar = sys.stderr.isatty() and len(users) > 5
        for n, user_id in enumerate(users, 1):
            result = await repair(user_id, dry_run=dry_run)
            counts[result.action] = counts.get(result.action, 0) + 1
            line = f"{result.user_id}: {result.action}" + (
                f" ({result.detail})" if result.detail else ""
            )
            if not show_bar:
                print(line)
                continue
            if result.action in UNREPAIRED:
                # Above the bar, so what needs a person is not lost in the progress display.
                sys.stderr.write("\r\033[K")
                print(line, flush=True)
            done = int(30 * n / len(users))
            sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {n}/{len(users)}")
            sys.stderr.flush()
        if show_bar:
            sys.stderr.write("\n")
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing to repair"
        print(f"{len(users)} connection(s) without a Calendly user URI: {summary}")
        return 1 if any(counts.get(action) for action in UNREPAIRED) else 0
    finally:
        await resolve(container.shutdown_resources())
