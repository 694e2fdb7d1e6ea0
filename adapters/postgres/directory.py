"""Every user's connection for the host's list: the one read across tenants (DR-30)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import msgspec
import psycopg_pool

from domain.errors import StorageUnavailable
from domain.model import CalendlyAccount, ConnectionStatus, WebhookStatus
from domain.ports import (
    ConnectionDirectory,
    ConnectionListQuery,
    ListedConnection,
    MaintenanceTrouble,
)

from .unit_of_work import UNAVAILABLE

Pool = psycopg_pool.AsyncConnectionPool[Any]

# The policy `host_reads` (migrations/0007) lets a transaction that sets this, and no tenant,
# read every connection; nothing else in the service sets it.
HOST_SCOPE: Final = "SELECT set_config('app.scope', 'host', true)"
READ_ONLY: Final = "SET TRANSACTION READ ONLY"
# A connection as the host sees it, with the worker's trouble: no secret column is read (no
# token, signing key or webhook token, sealed or not). Also the change feed's connection
# snapshot (changes.py); a WHERE clause follows.
CONNECTION_SNAPSHOT_COLUMNS: Final = """
SELECT c.id::text AS id, c.user_id, c.status, c.calendly_user_uri, c.calendly_organization_uri,
       c.provider_account_email, c.calendly_user_name, c.webhook_status, c.last_error,
       CASE WHEN c.access_token_enc IS NOT NULL AND c.refresh_token_enc IS NOT NULL
            THEN c.token_expires_at END AS token_expires_at,
       c.created_at, c.updated_at, c.connected_at,
       m.failures, m.last_error AS maintenance_error, m.retry_at
FROM calendar_connections c
LEFT JOIN connection_maintenance m ON m.connection_id = c.id AND m.failures > 0
"""
LIST_CONNECTIONS: Final = (
    CONNECTION_SNAPSHOT_COLUMNS
    + """
WHERE c.provider = 'calendly'
  AND (%(status)s::text IS NULL OR c.status = %(status)s::text)
  AND (%(after_id)s::uuid IS NULL
       OR (c.created_at, c.id) > (%(after_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY c.created_at, c.id
LIMIT %(limit)s
"""
)


class ConnectionRow(msgspec.Struct, kw_only=True):
    """A row of CONNECTION_SNAPSHOT_COLUMNS."""

    id: str
    user_id: str
    status: ConnectionStatus
    calendly_user_uri: str | None
    calendly_organization_uri: str | None
    provider_account_email: str | None
    calendly_user_name: str | None
    webhook_status: WebhookStatus
    last_error: str | None
    token_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    connected_at: datetime | None
    failures: int | None
    maintenance_error: str | None
    retry_at: datetime | None

    def listed(self) -> ListedConnection:
        account = (
            CalendlyAccount(
                user_uri=self.calendly_user_uri,
                organization_uri=self.calendly_organization_uri,
                email=self.provider_account_email or "",
                name=self.calendly_user_name,
            )
            if self.calendly_user_uri and self.calendly_organization_uri
            else None
        )
        trouble = (
            MaintenanceTrouble(
                failures=self.failures, last_error=self.maintenance_error, retry_at=self.retry_at
            )
            if self.failures
            else None
        )
        return ListedConnection(
            id=self.id,
            user_id=self.user_id,
            status=self.status,
            account=account,
            webhook_status=self.webhook_status,
            token_expires_at=self.token_expires_at,
            last_error=self.last_error,
            created_at=self.created_at,
            updated_at=self.updated_at,
            connected_at=self.connected_at,
            trouble=trouble,
        )


class PostgresConnectionDirectory(ConnectionDirectory):
    """Its own READ ONLY transaction, with the host scope and no tenant: it can only read."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def list(self, query: ConnectionListQuery) -> Sequence[ListedConnection]:
        after_at, after_id = query.after if query.after is not None else (None, None)
        params = {
            "status": query.status.value if query.status else None,
            "after_at": after_at,
            "after_id": after_id,
            "limit": query.limit,
        }
        try:
            async with self._pool.connection() as conn, conn.transaction():
                # READ ONLY first (it must be), the scope with it, then the one query.
                async with conn.pipeline():
                    await conn.execute(READ_ONLY)
                    await conn.execute(HOST_SCOPE)
                    cursor = await conn.execute(LIST_CONNECTIONS, params)
                rows = await cursor.fetchall()
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database cannot be reached") from exc
        return [msgspec.convert(row, ConnectionRow).listed() for row in rows]
