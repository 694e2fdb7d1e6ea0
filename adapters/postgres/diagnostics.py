"""What `calendly-connect doctor` asks the database, answered as plain values.

One blocking, autocommit connection as whichever login the operator gives (ideally one that sees
every tenant). Every question is one or two statements; Postgres' errors come out as
DiagnosticsFailed carrying the first line of the message, which never quotes the URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from domain.errors import StoredSecretUnreadable

from .directory import HOST_SCOPE
from .host_webhooks import STATUS as HOST_WEBHOOK_STATUS
from .key_rotation import COUNT_BY_KEY
from .migrations import Migration, discover
from .roles import (
    BATCH_WRITER_POLICIES,
    BATCH_WRITER_POLICY,
    BATCH_WRITER_ROLE,
    RoleFlags,
    role_flags_now,
)
from .sealing import TokenCipher, secret_context

TABLE_EXISTS = "SELECT to_regclass(%(table)s) IS NOT NULL AS present"
APPLIED_MIGRATIONS = "SELECT version FROM schema_migrations"
WITHOUT_USER_URI = """
SELECT user_id FROM calendar_connections
WHERE status <> 'disconnected' AND calendly_user_uri IS NULL ORDER BY user_id
"""
WITHOUT_SUBSCRIPTION = """
SELECT user_id, webhook_status FROM calendar_connections
WHERE status = 'active' AND webhook_status IN ('disabled', 'missing') ORDER BY user_id
"""
ON_A_FREE_PLAN = """
SELECT count(*) AS n FROM calendar_connections
WHERE status = 'active' AND webhook_status = 'unavailable_plan'
"""
NEEDING_REAUTH = """
SELECT user_id FROM calendar_connections WHERE status = 'needs_reauth' ORDER BY updated_at DESC
"""
LIVE_WORKERS = """
SELECT count(*) AS n FROM worker_heartbeats WHERE worker_id NOT LIKE 'host-webhooks:%%'
  AND seen_at > now() - make_interval(secs => %(within)s)
"""
# The host webhooks' dispatchers beat in the same table, under their own prefix.
LIVE_DISPATCHERS = """
SELECT count(*) AS n FROM worker_heartbeats WHERE worker_id LIKE 'host-webhooks:%%'
  AND seen_at > now() - make_interval(secs => %(within)s)
"""
# Every sealed secret of a connection, with the column name its context is bound to.
SEALED_SECRETS = """
SELECT id, user_id, access_token_enc AS access_token, refresh_token_enc AS refresh_token,
       webhook_signing_key_enc AS signing_key
FROM calendar_connections ORDER BY user_id
"""
HAS_RETRY_AT = """
SELECT 1 FROM information_schema.columns
WHERE table_name = 'connection_maintenance' AND column_name = 'retry_at'
"""
# The maintenance rows hold ids, times and errors only; every role may read them.
FAILING_MAINTENANCE = """
SELECT coalesce(last_error, '?') AS error, count(*) AS connections, max(failures) AS most,
       to_char(min(retry_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS next_try
FROM connection_maintenance WHERE failures > 0 GROUP BY 1 ORDER BY 2 DESC
"""
UNUSABLE_DELIVERIES = """
SELECT coalesce(reason, '?') AS reason, count(*) AS n FROM calendly_webhook_events
WHERE outcome = 'unusable' AND created_at > now() - interval '1 day'
GROUP BY 1 ORDER BY 2 DESC
"""


class DiagnosticsFailed(Exception):
    """The database could not be reached, or could not answer; `reason` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FailingMaintenance:
    """Connections whose maintenance failed with one error: how many, the longest run of
    failures, and the earliest next try (UTC, None: due now)."""

    error: str
    connections: int
    most_failures: int
    next_try: str | None


@dataclass(frozen=True)
class MigrationState:
    applied: int
    pending: list[Migration]


def _first_line(exc: Exception) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines and lines[0] else type(exc).__name__


@contextmanager
def _answering() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise DiagnosticsFailed(_first_line(exc)) from exc


class PostgresDiagnostics:
    """The doctor's questions, each answered on its own (a failed one leaves the others)."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        self._conn = conn

    @classmethod
    def connect(cls, url: str, *, timeout_seconds: int = 5) -> PostgresDiagnostics:
        """Raises DiagnosticsFailed when the database cannot be reached."""
        with _answering():
            conn = psycopg.connect(
                url, autocommit=True, connect_timeout=timeout_seconds, row_factory=dict_row
            )
        return cls(conn)

    def close(self) -> None:
        self._conn.close()

    @property
    def login(self) -> str:
        """The user the connection logged in as."""
        return str(self._conn.info.user)

    def _rows(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with _answering():
            return self._conn.execute(statement, params).fetchall()

    def has_table(self, table: str) -> bool:
        return bool(self._rows(TABLE_EXISTS, {"table": table})[0]["present"])

    def login_role(self) -> RoleFlags | None:
        """The login's own flags: a superuser or BYPASSRLS login sees every tenant's rows."""
        with _answering():
            return role_flags_now(self._conn, None)

    def role(self, name: str) -> RoleFlags | None:
        """The flags of the role `name`; None when it does not exist."""
        with _answering():
            return role_flags_now(self._conn, name)

    def batch_writer_policies(self) -> int:
        """How many of the batch writer's policies exist (DR-61; all: len(BATCH_WRITER_TABLES))."""
        rows = self._rows(
            BATCH_WRITER_POLICIES, {"policy": BATCH_WRITER_POLICY, "role": BATCH_WRITER_ROLE}
        )
        return int(rows[0]["n"])

    def can_act_as(self, role: str) -> bool:
        """Whether this login may SET ROLE `role` (as the service's pool does)."""
        try:
            with self._conn.transaction():
                self._conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        except psycopg.Error:
            return False
        return True

    def migrations(self) -> MigrationState:
        """How many migrations are applied and which are pending (all, before the first)."""
        applied: set[int] = set()
        if self.has_table("schema_migrations"):
            applied = {row["version"] for row in self._rows(APPLIED_MIGRATIONS)}
        pending = [m for m in discover() if m.version not in applied]
        return MigrationState(applied=len(applied), pending=pending)

    def connections_without_user_uri(self) -> list[str]:
        """Users whose live connection lacks its Calendly user URI (it receives no webhooks)."""
        return [row["user_id"] for row in self._rows(WITHOUT_USER_URI)]

    def connections_without_subscription(self) -> list[tuple[str, str]]:
        """(user, webhook status) of active connections whose subscription is disabled/missing."""
        return [(row["user_id"], row["webhook_status"]) for row in self._rows(WITHOUT_SUBSCRIPTION)]

    def connections_on_a_free_plan(self) -> int:
        """Active connections without webhooks because of Calendly's plan (kept by polling)."""
        return int(self._rows(ON_A_FREE_PLAN)[0]["n"])

    def connections_needing_reauth(self) -> list[str]:
        """Users whose connection needs them to approve the app again, most recent first."""
        return [row["user_id"] for row in self._rows(NEEDING_REAUTH)]

    def live_workers(self, within_seconds: float) -> int:
        """Workers whose heartbeat is younger than `within_seconds` (0 without the table)."""
        if not self.has_table("worker_heartbeats"):
            return 0
        return int(self._rows(LIVE_WORKERS, {"within": within_seconds})[0]["n"])

    def live_dispatchers(self, within_seconds: float) -> int:
        """Host webhook dispatchers whose heartbeat is younger than `within_seconds`."""
        if not self.has_table("worker_heartbeats"):
            return 0
        return int(self._rows(LIVE_DISPATCHERS, {"within": within_seconds})[0]["n"])

    def host_webhook_endpoints(self) -> list[dict[str, Any]] | None:
        """Each endpoint's state as `host-webhooks status` shows it (read with the host scope,
        as the dispatcher does); None before migration 0009."""
        if not self.has_table("host_webhook_endpoints"):
            return None
        with _answering(), self._conn.transaction():
            self._conn.execute("SET TRANSACTION READ ONLY")
            self._conn.execute(HOST_SCOPE)
            return self._conn.execute(HOST_WEBHOOK_STATUS).fetchall()

    def undecryptable_connections(self, cipher: TokenCipher) -> list[str]:
        """Users whose connection holds a sealed secret `cipher` cannot open (a key missing
        from TOKEN_ENCRYPTION_KEY, or a database from another deployment)."""
        users = []
        for row in self._rows(SEALED_SECRETS):
            for column in ("access_token", "refresh_token", "signing_key"):
                blob = row[column]
                if blob is None:
                    continue
                try:
                    cipher.decrypt(bytes(blob), context=secret_context(str(row["id"]), column))
                except StoredSecretUnreadable:
                    users.append(str(row["user_id"]))
                    break
        return users

    def secrets_by_key(self) -> dict[str, int]:
        """How many sealed secrets each key id seals (`rotate-keys --check`'s count)."""
        return {row["key_id"]: int(row["sealed"]) for row in self._rows(COUNT_BY_KEY)}

    def failing_maintenance(self) -> list[FailingMaintenance] | None:
        """Failing connections grouped by error, most common first; None before migration 0004."""
        if not self._rows(HAS_RETRY_AT):
            return None
        return [
            FailingMaintenance(
                error=row["error"],
                connections=int(row["connections"]),
                most_failures=int(row["most"]),
                next_try=row["next_try"],
            )
            for row in self._rows(FAILING_MAINTENANCE)
        ]

    def unusable_deliveries(self) -> list[tuple[str, int]]:
        """(reason, count) of deliveries stored aside in the last 24 hours, most common first."""
        return [(row["reason"], int(row["n"])) for row in self._rows(UNUSABLE_DELIVERIES)]
