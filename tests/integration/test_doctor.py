"""`calendly-connect doctor`: passes on a healthy setup and fails on each broken condition."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from adapters.crypto import AesGcmTokenCipher, parse_encryption_keys
from adapters.postgres.roles import BATCH_WRITER_ROLE
from adapters.postgres.sealing import secret_context
from domain.secret import Secret
from entrypoints.operator.doctor import Finding, run_checks
from tests.support.postgres import PgCluster


def sql(url: str, statement: str, *params: object) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement.encode(), params)


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "CALENDLY_OAUTH_CLIENT_ID": "client",
        "CALENDLY_OAUTH_CLIENT_SECRET": "client-secret-for-tests",
        "CALENDLY_WEBHOOK_SIGNING_KEY": "app-signing-key-for-tests",
        "PUBLIC_BASE_URL": "http://127.0.0.1:8000",
        "TOKEN_ENCRYPTION_KEY": "k1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "JWT_SECRET": "j" * 40,
    }


@pytest.fixture
def healthy(env: dict[str, str]) -> dict[str, str]:
    sql(env["DATABASE_URL"], "INSERT INTO worker_heartbeats (worker_id) VALUES ('w1')")
    return env


def connection_row(url: str, user: str, **columns: object) -> None:
    values: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "user_id": user,
        "status": "active",
        "calendly_user_uri": f"https://api.calendly.test/users/{user}",
        "calendly_organization_uri": "https://api.calendly.test/organizations/o",
        "access_token_enc": b"sealed",
        "refresh_token_enc": b"sealed",
        "webhook_status": "active",
        "webhook_token": f"tok-{user}",
        **columns,
    }
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    sql(url, f"INSERT INTO calendar_connections ({names}) VALUES ({marks})", *values.values())  # noqa: S608


# What `doctor` checks, by the names it prints.
EVERY_CHECK = [
    "configuration",
    "webhook signing key",
    "database reachable",
    "migrations applied",
    "webhook events table",
    "runtime role bound by RLS",
    "webhook batch writer bound by RLS",
    "every connection has its Calendly user URI",
    "subscriptions active",
    "connections needing re-authorization",
    "maintenance worker running",
    "host webhooks delivered",
    "connections whose maintenance keeps failing",
    "stored tokens decrypt with TOKEN_ENCRYPTION_KEY",
    "deliveries stored aside (24 h)",
]


def sealed_tokens(token_key: str) -> dict[str, object]:
    """A connection's id and token columns, sealed with `token_key` as the service seals them."""
    cipher = AesGcmTokenCipher(*parse_encryption_keys(token_key))
    connection_id = str(uuid.uuid4())
    return {
        "id": connection_id,
        **{
            f"{column}_enc": cipher.encrypt(
                Secret(f"{column}-value"), context=secret_context(connection_id, column)
            )
            for column in ("access_token", "refresh_token")
        },
    }


def by_name(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def test_a_healthy_setup_passes_every_check(healthy: dict[str, str]) -> None:
    connection_row(
        healthy["DATABASE_URL"], "alice", **sealed_tokens(healthy["TOKEN_ENCRYPTION_KEY"])
    )
    findings = run_checks(healthy)
    assert [f.check for f in findings if f.status != "pass"] == []
    assert sorted(f.check for f in findings) == sorted(EVERY_CHECK)  # each once, none else


def test_the_command_exits_zero_when_healthy_and_prints_json(healthy: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "doctor", "--json"],
        env={**{k: v for k, v in os.environ.items() if k.startswith(("PATH", "HOME"))}, **healthy},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["ok"] is True


def test_missing_configuration_fails(healthy: dict[str, str]) -> None:
    del healthy["JWT_SECRET"]
    finding = by_name(run_checks(healthy))["configuration"]
    assert finding.status == "fail"
    assert "JWT_SECRET" in finding.detail


def test_a_missing_signing_key_fails(healthy: dict[str, str]) -> None:
    healthy["CALENDLY_WEBHOOK_SIGNING_KEY"] = ""
    assert by_name(run_checks(healthy))["webhook signing key"].status == "fail"


def test_an_unreachable_database_fails_with_a_fix(healthy: dict[str, str]) -> None:
    healthy["DATABASE_URL"] = "postgresql://nobody@127.0.0.1:9/none"
    findings = by_name(run_checks(healthy))
    assert findings["database reachable"].status == "fail"
    assert findings["database reachable"].fix
    # What needs the database is skipped, not failed: one failure, with its fix, says it all.
    assert findings["migrations applied"].status == "skip"
    assert all(f.fix for f in findings.values() if f.status != "pass")
    assert [name for name, f in findings.items() if f.status == "fail"] == ["database reachable"]


def test_pending_migrations_fail(healthy: dict[str, str], pg_cluster: PgCluster) -> None:
    name = f"doctor_empty_{os.getpid()}"
    pg_cluster.drop(name)
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        healthy["DATABASE_URL"] = pg_cluster.url_for(name)
        findings = by_name(run_checks(healthy))
        assert findings["migrations applied"].status == "fail"
        assert "calendly-connect migrate" in findings["migrations applied"].fix
        assert findings["webhook events table"].status == "fail"
    finally:
        pg_cluster.drop(name)


def test_a_missing_events_table_fails(healthy: dict[str, str]) -> None:
    sql(healthy["DATABASE_URL"], "DROP TABLE calendly_webhook_events")
    assert by_name(run_checks(healthy))["webhook events table"].status == "fail"


@pytest.fixture
def bypassing_role(pg_cluster: PgCluster) -> Iterator[str]:
    role = f"doctor_bypass_{os.getpid()}"
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{role}"'.encode())
        conn.execute(f'CREATE ROLE "{role}" NOLOGIN BYPASSRLS'.encode())
    yield role
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{role}"'.encode())


def test_a_runtime_role_that_bypasses_rls_fails(
    healthy: dict[str, str], bypassing_role: str
) -> None:
    healthy["DATABASE_RUNTIME_ROLE"] = bypassing_role
    finding = by_name(run_checks(healthy))["runtime role bound by RLS"]
    assert finding.status == "fail"
    assert "BYPASSRLS" in finding.detail


def test_a_missing_runtime_role_fails(healthy: dict[str, str]) -> None:
    healthy["DATABASE_RUNTIME_ROLE"] = "no_such_role_here"
    assert by_name(run_checks(healthy))["runtime role bound by RLS"].status == "fail"


def test_a_batch_writer_that_bypasses_rls_fails(healthy: dict[str, str]) -> None:
    """The webhook batches' role (migrations/0019), made BYPASSRLS by hand: the doctor fails
    it and says how to mend it."""
    url = healthy["DATABASE_URL"]
    assert by_name(run_checks(healthy))["webhook batch writer bound by RLS"].status == "pass"
    sql(url, f"ALTER ROLE {BATCH_WRITER_ROLE} BYPASSRLS")
    try:
        finding = by_name(run_checks(healthy))["webhook batch writer bound by RLS"]
    finally:
        sql(url, f"ALTER ROLE {BATCH_WRITER_ROLE} NOBYPASSRLS")
    assert finding.status == "fail"
    assert "BYPASSRLS" in finding.detail


def test_a_batch_writer_without_its_policies_warns(healthy: dict[str, str]) -> None:
    sql(healthy["DATABASE_URL"], "DROP POLICY batch_users ON meeting_invitees")
    finding = by_name(run_checks(healthy))["webhook batch writer bound by RLS"]
    assert finding.status == "warn"
    assert "policies" in finding.detail
    assert "migrate" in (finding.fix or "")


def test_a_connection_without_its_user_uri_fails(healthy: dict[str, str]) -> None:
    connection_row(healthy["DATABASE_URL"], "stuck", calendly_user_uri=None)
    finding = by_name(run_checks(healthy))["every connection has its Calendly user URI"]
    assert finding.status == "fail"
    assert "stuck" in finding.detail
    assert "repair-connections" in finding.fix


def test_a_disabled_subscription_fails(healthy: dict[str, str]) -> None:
    connection_row(healthy["DATABASE_URL"], "bob", webhook_status="disabled")
    finding = by_name(run_checks(healthy))["subscriptions active"]
    assert finding.status == "fail"
    assert "bob (disabled)" in finding.detail


def test_connections_needing_reauthorization_are_listed(healthy: dict[str, str]) -> None:
    connection_row(healthy["DATABASE_URL"], "carol", status="needs_reauth")
    finding = by_name(run_checks(healthy))["connections needing re-authorization"]
    assert finding.status == "warn"
    assert "carol" in finding.detail
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "doctor", "--strict"],
        env={**{k: v for k, v in os.environ.items() if k.startswith(("PATH", "HOME"))}, **healthy},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "carol" in result.stdout


def test_no_running_worker_fails(env: dict[str, str]) -> None:
    finding = by_name(run_checks(env))["maintenance worker running"]
    assert finding.status == "fail"
    assert "calendly-connect worker" in finding.fix


def test_deliveries_stored_aside_are_reported(healthy: dict[str, str]) -> None:
    sql(
        healthy["DATABASE_URL"],
        "INSERT INTO calendly_webhook_events (event_id, event_type, outcome, reason)"
        " VALUES ('x', 'unknown', 'unusable', 'no connected user for this delivery')",
    )
    finding = by_name(run_checks(healthy))["deliveries stored aside (24 h)"]
    assert finding.status == "warn"
    assert "no connected user" in finding.detail


def test_connections_whose_maintenance_keeps_failing_are_reported_with_a_fix(
    healthy: dict[str, str],
) -> None:
    url = healthy["DATABASE_URL"]
    connection_row(url, "dora")
    sql(
        url,
        "UPDATE connection_maintenance SET failures = 4,"
        " last_error = 'unexpected DecryptionFailed', retry_at = now() + interval '4 minutes'",
    )
    finding = by_name(run_checks(healthy))["connections whose maintenance keeps failing"]
    assert finding.status == "warn"
    assert "1 connection(s): 1 x unexpected DecryptionFailed (up to 4 failures" in finding.detail
    assert "TOKEN_ENCRYPTION_KEY" in finding.fix


def test_failing_connections_without_a_retry_time_are_reported_too(
    healthy: dict[str, str],
) -> None:
    """Rows that failed before retry_at existed (or whose user reconnected) have none."""
    url = healthy["DATABASE_URL"]
    connection_row(url, "erin")
    sql(url, "UPDATE connection_maintenance SET failures = 2, last_error = 'unexpected KeyError'")
    finding = by_name(run_checks(healthy))["connections whose maintenance keeps failing"]
    assert finding.status == "warn"
    assert "1 x unexpected KeyError (up to 2 failures in a row, due now)" in finding.detail


WHSEC = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def endpoint_row(url: str, name: str = "crm", **columns: object) -> None:
    values: dict[str, object] = {"name": name, "url": "https://crm.test/hook", **columns}
    names = ", ".join([*values, "fan_xid"])
    marks = ", ".join(["%s"] * len(values))
    sql(
        url,
        f"INSERT INTO host_webhook_endpoints ({names}) "  # noqa: S608 - test-only, fixed names
        f"VALUES ({marks}, pg_snapshot_xmin(pg_current_snapshot()))",
        *values.values(),
    )


def with_host_webhooks(env: dict[str, str]) -> dict[str, str]:
    return {**env, "HOST_WEBHOOK_URL": "crm=https://crm.test/hook", "HOST_WEBHOOK_SECRET": WHSEC}


def test_host_webhooks_need_a_running_dispatcher(healthy: dict[str, str]) -> None:
    env = with_host_webhooks(healthy)
    finding = by_name(run_checks(env))["host webhooks delivered"]
    assert finding.status == "fail"
    assert "no dispatcher has started" in finding.detail
    endpoint_row(env["DATABASE_URL"])
    finding = by_name(run_checks(env))["host webhooks delivered"]
    assert finding.status == "fail"
    assert "host-webhooks run" in finding.fix
    sql(env["DATABASE_URL"], "INSERT INTO worker_heartbeats VALUES ('host-webhooks:d1')")
    finding = by_name(run_checks(env))["host webhooks delivered"]
    assert finding.status == "pass"
    assert "1 dispatcher(s)" in finding.detail
    # A dispatcher is no maintenance worker.
    assert by_name(run_checks(env))["maintenance worker running"].detail == "1 worker(s) alive"


def test_a_disabled_or_stuck_endpoint_is_reported(healthy: dict[str, str]) -> None:
    env = with_host_webhooks(healthy)
    url = env["DATABASE_URL"]
    sql(url, "INSERT INTO worker_heartbeats VALUES ('host-webhooks:d1')")
    endpoint_row(url, disabled_at="2026-01-01T00:00:00Z", disabled_reason="410 Gone")
    finding = by_name(run_checks(env))["host webhooks delivered"]
    assert finding.status == "fail"
    assert "crm is disabled (410 Gone)" in finding.detail
    assert "host-webhooks enable crm" in finding.fix
    sql(url, "UPDATE host_webhook_endpoints SET disabled_at = NULL")
    connection_row(url, "alice")
    sql(url, "UPDATE change_log SET created_at = now() - interval '1 hour'")
    finding = by_name(run_checks(env))["host webhooks delivered"]
    assert finding.status == "warn"
    assert "crm is stuck: oldest undelivered 60 min ago" in finding.detail
    assert "host-webhooks retry --endpoint crm" in finding.fix


def test_tokens_sealed_with_another_key_are_counted_with_the_fix(
    healthy: dict[str, str],
) -> None:
    # A database left from another TOKEN_ENCRYPTION_KEY (issue 14): its rows cannot be opened.
    other = "k9:" + base64.urlsafe_b64encode(os.urandom(32)).decode()
    url = healthy["DATABASE_URL"]
    connection_row(url, "alice", **sealed_tokens(healthy["TOKEN_ENCRYPTION_KEY"]))
    connection_row(url, "bob", **sealed_tokens(other))
    connection_row(url, "carol", **sealed_tokens(other))
    finding = by_name(run_checks(healthy))["stored tokens decrypt with TOKEN_ENCRYPTION_KEY"]
    assert finding.status == "fail"
    assert finding.detail.startswith("2 connection(s)")
    assert "bob, carol" in finding.detail
    assert "alice" not in finding.detail
    assert "TOKEN_ENCRYPTION_KEY" in finding.fix


def test_secrets_still_under_an_older_key_are_counted_with_the_rotation_to_run(
    healthy: dict[str, str],
) -> None:
    url = healthy["DATABASE_URL"]
    old = healthy["TOKEN_ENCRYPTION_KEY"]  # k1
    connection_row(url, "alice", **sealed_tokens(old))
    newer = "k2:" + base64.urlsafe_b64encode(os.urandom(32)).decode() + "," + old
    env = {**healthy, "TOKEN_ENCRYPTION_KEY": newer}
    finding = by_name(run_checks(env))["stored tokens decrypt with TOKEN_ENCRYPTION_KEY"]
    assert finding.status == "warn"
    assert "secret(s) are still sealed under an older key than 'k2'" in finding.detail
    assert "under 'k1'" in finding.detail
    assert "calendly-connect rotate-keys" in finding.fix
    finding = by_name(run_checks(healthy))["stored tokens decrypt with TOKEN_ENCRYPTION_KEY"]
    assert finding.status == "pass"  # with k1 first, nothing is old
