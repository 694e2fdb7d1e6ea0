"""`calendly-connect doctor`: the deployment checklist as one command, with a fix per finding.

The checks read the configuration through entrypoints.settings and ask the database through
adapters.postgres.diagnostics; each says what is wrong and how to fix it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from adapters.crypto import AesGcmTokenCipher, parse_encryption_keys
from adapters.postgres.diagnostics import DiagnosticsFailed, PostgresDiagnostics
from adapters.postgres.roles import BATCH_WRITER_ROLE, BATCH_WRITER_TABLES
from domain.errors import StoredSecretUnreadable
from entrypoints.settings import (
    ConfigError,
    DatabaseSettings,
    environment_value,
    load_database_settings,
    load_dispatcher_settings,
    load_settings,
)

# "skip": the check could not run (no database, a login that cannot see every tenant,
# migrations pending): said, with what would let it run, but not a failure.
Status = Literal["pass", "warn", "fail", "skip"]
# A worker beats every 15 s (entrypoints/service/worker.py); none for this long means none runs.
WORKER_SILENCE_SECONDS: Final = 120.0
# A host webhook undelivered for longer than this means its endpoint is stuck (DR-34).
HOST_WEBHOOK_STUCK_SECONDS: Final = 300.0


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class Context:
    environ: Mapping[str, str]
    # The database's settings as the doctor reads them (DOCTOR_DATABASE_URL if set).
    database: DatabaseSettings | None = None
    db: PostgresDiagnostics | None = None
    sees_all_tenants: bool = False


def check_configuration(ctx: Context) -> Finding:
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
    # Read as written, so the count is right even when other settings do not load.
    written = environment_value(ctx.environ, "CALENDLY_WEBHOOK_SIGNING_KEY") or ""
    keys = [key for key in written.split(",") if key.strip()]
    if not keys:
        return Finding(
            "webhook signing key",
            "fail",
            "CALENDLY_WEBHOOK_SIGNING_KEY is not set: deliveries signed with the app key fail",
            "copy the signing key Calendly showed when the OAuth app was created",
        )
    return Finding("webhook signing key", "pass", f"{len(keys)} key(s) configured")


def check_database(ctx: Context) -> Finding:
    name = (
        "DOCTOR_DATABASE_URL"
        if environment_value(ctx.environ, "DOCTOR_DATABASE_URL")
        else "DATABASE_URL"
    )
    if environment_value(ctx.environ, name) is None:
        return Finding("database reachable", "fail", "DATABASE_URL is not set", "set DATABASE_URL")
    try:
        # Checked as the service checks it: a malformed URL is described, never quoted.
        ctx.database = load_database_settings(ctx.environ, url_variable=name)
    except ConfigError as exc:
        return Finding(
            "database reachable",
            "fail",
            "; ".join(exc.problems),
            f"correct {', '.join(exc.variables)}",
        )
    try:
        ctx.db = PostgresDiagnostics.connect(ctx.database.url.reveal())
    except DiagnosticsFailed as exc:
        return Finding(
            "database reachable",
            "fail",
            f"cannot connect: {exc.reason}",
            "check DATABASE_URL, that Postgres runs, and that this machine may reach it",
        )
    try:
        login = ctx.db.login_role()
    except DiagnosticsFailed:  # the checks that need every tenant say so themselves
        login = None
    ctx.sees_all_tenants = login is not None and login.sees_every_tenant
    return Finding("database reachable", "pass", f"connected as {ctx.db.login}")


DatabaseCheck = Callable[[Context, PostgresDiagnostics], Finding]


def needs_db(check: DatabaseCheck) -> Callable[[Context], Finding]:
    name = check.__doc__ or check.__name__

    def run(ctx: Context) -> Finding:
        if ctx.db is None:
            return Finding(
                name,
                "skip",
                "not checked: the database is not reachable",
                "fix the `database reachable` finding above, then run the doctor again",
            )
        try:
            return check(ctx, ctx.db)
        except DiagnosticsFailed as exc:
            return Finding(
                name, "fail", f"cannot check: {exc.reason}", "run: calendly-connect migrate"
            )

    run.__name__ = check.__name__
    return run


@needs_db
def check_migrations(ctx: Context, db: PostgresDiagnostics) -> Finding:
    """migrations applied"""
    state = db.migrations()
    if state.pending:
        waiting = [f"{m.version:04d}_{m.name}" for m in state.pending]
        return Finding(
            "migrations applied",
            "fail",
            f"pending: {', '.join(waiting)}",
            "run: calendly-connect migrate",
        )
    return Finding("migrations applied", "pass", f"{state.applied} applied")


@needs_db
def check_events_table(ctx: Context, db: PostgresDiagnostics) -> Finding:
    """webhook events table"""
    if not db.has_table("calendly_webhook_events"):
        return Finding(
            "webhook events table",
            "fail",
            "calendly_webhook_events is missing: deliveries cannot be deduplicated",
            "run: calendly-connect migrate",
        )
    return Finding("webhook events table", "pass", "calendly_webhook_events is present")


@needs_db
def check_runtime_role(ctx: Context, db: PostgresDiagnostics) -> Finding:
    """runtime role bound by RLS"""
    assert ctx.database is not None  # read by check_database, which opened `db`
    role = ctx.database.runtime_role
    flags = db.role(role)
    if flags is None:
        return Finding(
            "runtime role bound by RLS",
            "fail",
            f"the role {role!r} does not exist",
            "run: calendly-connect migrate (it creates the role)",
        )
    problems = flags.problems()
    if problems:
        return Finding(
            "runtime role bound by RLS",
            "fail",
            f"{role} {' and '.join(problems)}: tenants would not be isolated",
            f"ALTER ROLE {role} NOSUPERUSER NOBYPASSRLS; move table ownership to another role",
        )
    if not db.can_act_as(role):
        return Finding(
            "runtime role bound by RLS",
            "fail",
            f"this login cannot SET ROLE {role}",
            f"GRANT {role} TO <the DATABASE_URL user>",
        )
    return Finding("runtime role bound by RLS", "pass", f"{role}: no superuser, no BYPASSRLS")


@needs_db
def check_batch_writer(ctx: Context, db: PostgresDiagnostics) -> Finding:
    """webhook batch writer bound by RLS"""
    name = "webhook batch writer bound by RLS"
    role = BATCH_WRITER_ROLE
    slower = "webhook batches write each delivery by its own statement (slower, DR-61)"
    mend = (
        "run `calendly-connect migrate` as a user that may create roles (it makes the role,"
        f" its rights and policies); or have an administrator CREATE ROLE {role} NOLOGIN"
        f" NOINHERIT and GRANT {role} TO <the DATABASE_URL user> WITH INHERIT FALSE, SET TRUE"
        f" (PostgreSQL 15: GRANT {role} TO <the DATABASE_URL user>), then migrate again"
    )
    flags = db.role(role)
    if flags is None:
        return Finding(name, "warn", f"the role {role!r} does not exist: {slower}", mend)
    problems = flags.problems()
    if problems:
        return Finding(
            name,
            "fail",
            f"{role} {' and '.join(problems)}: a webhook batch could write any user's rows"
            " (the service refuses to start)",
            f"ALTER ROLE {role} NOSUPERUSER NOBYPASSRLS; move table ownership to another role",
        )
    if db.batch_writer_policies() < len(BATCH_WRITER_TABLES):
        return Finding(name, "warn", f"the policies of {role} are missing: {slower}", mend)
    if not db.can_act_as(role):
        return Finding(name, "warn", f"this login cannot SET ROLE {role}: {slower}", mend)
    return Finding(name, "pass", f"{role}: no superuser, no BYPASSRLS, its policies in place")


def _tenant_blind(name: str) -> Finding:
    return Finding(
        name,
        "skip",
        "this login is bound by row-level security and cannot see every tenant",
        "run the doctor with DOCTOR_DATABASE_URL of a role with BYPASSRLS (or a superuser)",
    )


def _some(names: Sequence[str], shown: int = 10) -> str:
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")


@needs_db
def check_user_uris(ctx: Context, db: PostgresDiagnostics) -> Finding:
    """every connection has its Calendly user URI"""
    name = "every connection has its Calendly user URI"
    if not ctx.sees_all_tenants:
        return _tenant_blind(name)
    users = db.connections_without_user_uri()
    if users:
        return Finding(
            name,
            "fail",
            f"{len(users)} connection(s) receive no webhooks: {_some(users)}",
            "run: calendly-connect repair-connections",
        )
    return Finding(name, "pass", "all connected rows have one")


@needs_db
def check_subscriptions(ctx: Context, db: PostgresDiagnostics) -> Finding:
    """subscriptions active"""
    name = "subscriptions active"
    if not ctx.sees_all_tenants:
        return _tenant_blind(name)
    broken = db.connections_without_subscription()
    free = db.connections_on_a_free_plan()
    polled = f"; {free} free-plan connection(s) are kept in sync by polling"
    if broken:
        listed = ", ".join(f"{user} ({status})" for user, status in broken[:10])
        return Finding(
            name,
            "fail",
            f"{len(broken)} without a working subscription: {listed}{polled}",
            "make sure `calendly-connect worker` runs (it repairs them), or "
            "run: calendly-connect repair-connections",
        )
    return Finding(name, "pass", f"every paid-plan connection has one{polled}")


@needs_db
def check_reauth(ctx: Context, db: PostgresDiagnostics) -> Finding:
    """connections needing re-authorization"""
    name = "connections needing re-authorization"
    if not ctx.sees_all_tenants:
        return _tenant_blind(name)
    users = db.connections_needing_reauth()
    if users:
        return Finding(
            name,
            "warn",
            f"{len(users)}: {_some(users)}",
            "their users see a Reconnect banner; only they can approve again at Calendly",
        )
    return Finding(name, "pass", "none")


@needs_db
def check_worker(ctx: Context, db: PostgresDiagnostics) -> Finding:
    """maintenance worker running"""
    alive = db.live_workers(within_seconds=WORKER_SILENCE_SECONDS)
    if not alive:
        return Finding(
            "maintenance worker running",
            "fail",
            "no worker was seen in the last 2 minutes: tokens, subscriptions and free plans "
            "are not looked after",
            "start: calendly-connect worker (any number of them)",
        )
    return Finding("maintenance worker running", "pass", f"{alive} worker(s) alive")


def _configured_endpoints(environ: Mapping[str, str]) -> set[str] | None:
    """The endpoint names HOST_WEBHOOK_URL gives (None when it cannot be read)."""
    try:
        settings = load_dispatcher_settings(environ)
    except ConfigError:
        return None
    return {endpoint.name for endpoint in settings.host_webhooks.endpoints}


@needs_db
def check_host_webhooks(ctx: Context, db: PostgresDiagnostics) -> Finding:
    """host webhooks delivered"""
    name = "host webhooks delivered"
    found = db.host_webhook_endpoints()
    configured = _configured_endpoints(ctx.environ)
    if found is None:
        return Finding(
            name, "skip", "not checked: migrations are pending", "run: calendly-connect migrate"
        )
    if configured is not None:
        found = [row for row in found if row["name"] in configured]
    if not found:
        if configured:
            return Finding(
                name,
                "fail",
                "HOST_WEBHOOK_URL is set but no dispatcher has started yet",
                "start: calendly-connect host-webhooks run (beside the worker)",
            )
        return Finding(name, "pass", "no host webhook endpoint is configured")
    now = datetime.now(UTC)
    problems: list[str] = []
    fixes: list[str] = []
    status: Status = "pass"
    for row in found:
        oldest = row["oldest_undelivered"]
        if row["disabled_at"] is not None:
            status = "fail"
            problems.append(f"{row['name']} is disabled ({row['disabled_reason']})")
            fixes.append(f"calendly-connect host-webhooks enable {row['name']}")
        elif row["parked"] or (
            oldest is not None and (now - oldest).total_seconds() > HOST_WEBHOOK_STUCK_SECONDS
        ):
            status = "fail" if status == "fail" else "warn"
            age = f"{int((now - oldest).total_seconds() // 60)} min" if oldest else "-"
            problems.append(
                f"{row['name']} is stuck: oldest undelivered {age} ago, {row['parked']} parked "
                f"stream(s), last error {row['last_error'] or row['streams_error'] or '-'}"
            )
            fixes.append(
                f"fix the endpoint, then: calendly-connect host-webhooks retry --endpoint "
                f"{row['name']} (see host-webhooks status)"
            )
    alive = db.live_dispatchers(within_seconds=WORKER_SILENCE_SECONDS)
    if not alive:
        status = "fail"
        problems.append("no host webhooks dispatcher was seen in the last 2 minutes")
        fixes.append("start: calendly-connect host-webhooks run (any number of them)")
    if problems:
        return Finding(name, status, "; ".join(problems), "; ".join(fixes))
    return Finding(name, "pass", f"{len(found)} endpoint(s) up to date, {alive} dispatcher(s)")


# What the worker's most common errors mean, and what to do about each.
MAINTENANCE_FIXES = {
    "DecryptionFailed": StoredSecretUnreadable.FIX,
    "CalendlyUnavailable": "Calendly could not be reached or answered 5xx: check the network "
    "and CALENDLY_API_BASE_URL; the worker keeps retrying",
    "RateLimited": "Calendly's rate limit: the worker waits for each reset by itself",
}


@needs_db
def check_maintenance(ctx: Context, db: PostgresDiagnostics) -> Finding:
    """connections whose maintenance keeps failing"""
    name = "connections whose maintenance keeps failing"
    groups = db.failing_maintenance()
    if groups is None:
        return Finding(
            name, "skip", "not checked: migrations are pending", "run: calendly-connect migrate"
        )
    if not groups:
        return Finding(name, "pass", "none")
    total = sum(group.connections for group in groups)
    listed = "; ".join(
        f"{group.connections} x {group.error} (up to {group.most_failures} failures in a row"
        + (f", next try {group.next_try} UTC)" if group.next_try else ", due now)")
        for group in groups[:5]
    )
    fixes = [
        fix for key, fix in MAINTENANCE_FIXES.items() if any(key in group.error for group in groups)
    ]
    return Finding(
        name,
        "warn",
        f"{total} connection(s): {listed}",
        "; ".join(fixes)
        or "read the worker's log lines `worker.maintenance_failed` (the first failure of each "
        "connection carries its traceback); each connection is retried with back-off",
    )


@needs_db
def check_stored_secrets(ctx: Context, db: PostgresDiagnostics) -> Finding:
    """stored tokens decrypt with TOKEN_ENCRYPTION_KEY"""
    name = "stored tokens decrypt with TOKEN_ENCRYPTION_KEY"
    if not ctx.sees_all_tenants:
        return _tenant_blind(name)
    try:
        keys, active = parse_encryption_keys(
            environment_value(ctx.environ, "TOKEN_ENCRYPTION_KEY") or ""
        )
        cipher = AesGcmTokenCipher(keys, active)
    except ValueError:
        return Finding(
            name,
            "skip",
            "not checked: TOKEN_ENCRYPTION_KEY is not set or not valid",
            "fix the `configuration` finding above",
        )
    users = db.undecryptable_connections(cipher)
    if users:
        return Finding(
            name,
            "fail",
            f"{len(users)} connection(s) hold tokens these keys cannot decrypt (sealed with a "
            f"key not configured here, e.g. a database from another deployment): {_some(users)}",
            StoredSecretUnreadable.FIX,
        )
    older = {k: n for k, n in db.secrets_by_key().items() if k != active}
    if older:
        counts = ", ".join(f"{n} under {k!r}" for k, n in older.items())
        return Finding(
            name,
            "warn",
            f"every stored token decrypts; {sum(older.values())} secret(s) are still sealed "
            f"under an older key than {active!r} ({counts})",
            "run `calendly-connect rotate-keys` (safe while the service runs), then remove the "
            "old key from TOKEN_ENCRYPTION_KEY",
        )
    return Finding(name, "pass", f"every stored token decrypts and is sealed under {active!r}")


@needs_db
def check_unusable(ctx: Context, db: PostgresDiagnostics) -> Finding:
    """deliveries stored aside (24 h)"""
    name = "deliveries stored aside (24 h)"
    if not ctx.sees_all_tenants:
        return _tenant_blind(name)
    reasons = db.unusable_deliveries()
    if reasons:
        listed = "; ".join(f"{n} x {reason}" for reason, n in reasons[:5])
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
    check_batch_writer,
    check_user_uris,
    check_subscriptions,
    check_reauth,
    check_worker,
    check_host_webhooks,
    check_maintenance,
    check_stored_secrets,
    check_unusable,
)


def run_checks(environ: Mapping[str, str]) -> list[Finding]:
    ctx = Context(environ=environ)
    try:
        return [check(ctx) for check in CHECKS]
    finally:
        if ctx.db is not None:
            ctx.db.close()


MARKS = {"pass": "✓", "warn": "!", "fail": "✗", "skip": "-"}


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    parser = argparse.ArgumentParser(
        prog="calendly-connect doctor",
        description="Check the deployment: configuration, database, roles, connections, worker.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--strict", action="store_true", help="warnings fail too")
    args = parser.parse_args(argv)
    findings = run_checks(environ)
    failed = [f for f in findings if f.status == "fail" or (args.strict and f.status == "warn")]
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(f) for f in findings]}, indent=2))
    else:
        for f in findings:
            print(f"{MARKS[f.status]} {f.check}: {f.detail}")
            if f.status != "pass" and f.fix:
                print(f"    fix: {f.fix}")
        skipped = sum(f.status == "skip" for f in findings)
        print(
            f"\n{len(findings) - len(failed) - skipped} ok, {skipped} skipped, {len(failed)} to fix"
        )
    return 1 if failed else 0
