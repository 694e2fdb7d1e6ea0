"""The tenant's Calendly connection over psycopg 3: its row, its sealed secrets, its version."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import msgspec
import psycopg

from domain.errors import AccountAlreadyConnected, ConcurrentUpdate
from domain.model import CalendlyAccount, Connection, ConnectionStatus, TokenSet, WebhookStatus
from domain.ports import ConnectionRepository, MaintenanceState, MaintenanceTrouble
from domain.secret import Secret

from .sealing import TokenCipher, secret_context
from .session import ReadOnly, Session

ONE_USER_PER_ACCOUNT = "calendar_connections_one_user_per_account"


class ConnectionRow(msgspec.Struct, kw_only=True):
    id: str
    user_id: str
    status: ConnectionStatus
    calendly_user_uri: str | None
    calendly_organization_uri: str | None
    provider_account_email: str | None
    calendly_user_name: str | None
    access_token_enc: bytes | None
    refresh_token_enc: bytes | None
    token_expires_at: datetime | None
    webhook_status: WebhookStatus
    webhook_subscription_uri: str | None
    webhook_signing_key_enc: bytes | None
    webhook_token: str
    last_error: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    connected_at: datetime | None


CONNECTION_COLUMNS = """
    id::text AS id, user_id, status, calendly_user_uri, calendly_organization_uri,
    provider_account_email, calendly_user_name, access_token_enc, refresh_token_enc,
    token_expires_at, webhook_status, webhook_subscription_uri, webhook_signing_key_enc,
    webhook_token, last_error, version, created_at, updated_at, connected_at
"""
# A constant column list is formatted in; no input ever is.
SELECT_CONNECTION = f"""
SELECT {CONNECTION_COLUMNS} FROM calendar_connections
WHERE user_id = %(user_id)s AND provider = 'calendly'
"""  # noqa: S608
# The worker's trouble with the tenant's connection (the maintenance rows are not per tenant:
# hence the explicit filter).
SELECT_MAINTENANCE = """
SELECT failures, last_error, retry_at, synced_at FROM connection_maintenance
WHERE user_id = %(user_id)s
"""
INSERT_CONNECTION = """
INSERT INTO calendar_connections (
    id, user_id, status, calendly_user_uri, calendly_organization_uri, provider_account_email,
    calendly_user_name, access_token_enc, refresh_token_enc, token_expires_at, webhook_status,
    webhook_subscription_uri, webhook_signing_key_enc, webhook_token, last_error, version,
    created_at, updated_at, connected_at
) VALUES (
    %(id)s, %(user_id)s, %(status)s, %(calendly_user_uri)s, %(calendly_organization_uri)s,
    %(provider_account_email)s, %(calendly_user_name)s, %(access_token_enc)s,
    %(refresh_token_enc)s, %(token_expires_at)s, %(webhook_status)s,
    %(webhook_subscription_uri)s, %(webhook_signing_key_enc)s, %(webhook_token)s,
    %(last_error)s, 1, %(created_at)s, %(updated_at)s, %(connected_at)s
)
"""
UPDATE_CONNECTION = """
UPDATE calendar_connections SET
    status = %(status)s, calendly_user_uri = %(calendly_user_uri)s,
    calendly_organization_uri = %(calendly_organization_uri)s,
    provider_account_email = %(provider_account_email)s,
    calendly_user_name = %(calendly_user_name)s, access_token_enc = %(access_token_enc)s,
    refresh_token_enc = %(refresh_token_enc)s, token_expires_at = %(token_expires_at)s,
    webhook_status = %(webhook_status)s, webhook_subscription_uri = %(webhook_subscription_uri)s,
    webhook_signing_key_enc = %(webhook_signing_key_enc)s, webhook_token = %(webhook_token)s,
    last_error = %(last_error)s, updated_at = %(updated_at)s,
    connected_at = %(connected_at)s, version = version + 1
WHERE id = %(id)s AND version = %(version)s
RETURNING version
"""


class PostgresConnectionRepository(ConnectionRepository):
    # A read FOR UPDATE locks rows until the transaction ends: it counts as a write.
    READ_ONLY: ClassVar[ReadOnly] = ReadOnly(
        reads=frozenset({SELECT_CONNECTION, SELECT_MAINTENANCE})
    )

    def __init__(self, session: Session, cipher: TokenCipher) -> None:
        self._session = session
        self._cipher = cipher

    async def get(self, user_id: str, *, for_update: bool = False) -> Connection | None:
        query = SELECT_CONNECTION + (" FOR UPDATE" if for_update else "")
        cursor = await self._session.execute(query, {"user_id": user_id})
        row = await cursor.fetchone()
        return None if row is None else self._to_domain(msgspec.convert(row, ConnectionRow))

    async def add(self, connection: Connection) -> Connection:
        try:
            await self._session.execute(INSERT_CONNECTION, self._to_row(connection))
        except psycopg.errors.UniqueViolation as exc:
            raise self._conflict(exc, connection) from exc
        return msgspec.structs.replace(connection, version=1)

    async def save(self, connection: Connection) -> Connection:
        try:
            cursor = await self._session.execute(
                UPDATE_CONNECTION, {**self._to_row(connection), "version": connection.version}
            )
        except psycopg.errors.UniqueViolation as exc:
            raise self._conflict(exc, connection) from exc
        row = await cursor.fetchone()
        if row is None:
            raise ConcurrentUpdate(f"connection {connection.id} changed meanwhile")
        return msgspec.structs.replace(connection, version=row["version"])

    async def maintenance(self, user_id: str) -> MaintenanceState | None:
        cursor = await self._session.execute(SELECT_MAINTENANCE, {"user_id": user_id})
        row = await cursor.fetchone()
        if row is None:
            return None
        trouble = msgspec.convert(row, MaintenanceTrouble) if row["failures"] > 0 else None
        return MaintenanceState(synced_at=row["synced_at"], trouble=trouble)

    @staticmethod
    def _conflict(exc: psycopg.errors.UniqueViolation, connection: Connection) -> Exception:
        if exc.diag.constraint_name == ONE_USER_PER_ACCOUNT and connection.account is not None:
            return AccountAlreadyConnected(connection.account.user_uri)
        return ConcurrentUpdate(f"connection {connection.id} conflicts with a stored one")

    def _context(self, connection_id: str, column: str) -> str:
        return secret_context(connection_id, column)

    def _seal(self, connection_id: str, column: str, secret: Secret | None) -> bytes | None:
        if secret is None:
            return None
        return self._cipher.encrypt(secret, context=self._context(connection_id, column))

    def _open(self, connection_id: str, column: str, blob: bytes | None) -> Secret | None:
        if blob is None:
            return None
        return self._cipher.decrypt(blob, context=self._context(connection_id, column))

    def _to_row(self, c: Connection) -> dict[str, Any]:
        tokens, account = c.tokens, c.account
        return {
            "id": c.id,
            "user_id": c.user_id,
            "status": c.status.value,
            "calendly_user_uri": account.user_uri if account else None,
            "calendly_organization_uri": account.organization_uri if account else None,
            "provider_account_email": account.email if account else None,
            "calendly_user_name": account.name if account else None,
            "access_token_enc": self._seal(
                c.id, "access_token", tokens.access_token if tokens else None
            ),
            "refresh_token_enc": self._seal(
                c.id, "refresh_token", tokens.refresh_token if tokens else None
            ),
            "token_expires_at": tokens.expires_at if tokens else None,
            "webhook_status": c.webhook_status.value,
            "webhook_subscription_uri": c.subscription_uri,
            "webhook_signing_key_enc": self._seal(c.id, "signing_key", c.signing_key),
            "webhook_token": c.webhook_token,
            "last_error": c.last_error,
            "created_at": c.created_at,
            "updated_at": c.updated_at,
            "connected_at": c.connected_at,
        }

    def _to_domain(self, row: ConnectionRow) -> Connection:
        access = self._open(row.id, "access_token", row.access_token_enc)
        refresh = self._open(row.id, "refresh_token", row.refresh_token_enc)
        tokens = (
            TokenSet(access_token=access, refresh_token=refresh, expires_at=row.token_expires_at)
            if access is not None and refresh is not None and row.token_expires_at is not None
            else None
        )
        account = (
            CalendlyAccount(
                user_uri=row.calendly_user_uri,
                organization_uri=row.calendly_organization_uri,
                email=row.provider_account_email or "",
                name=row.calendly_user_name,
            )
            if row.calendly_user_uri and row.calendly_organization_uri
            else None
        )
        return Connection(
            id=row.id,
            user_id=row.user_id,
            status=row.status,
            account=account,
            tokens=tokens,
            webhook_status=row.webhook_status,
            subscription_uri=row.webhook_subscription_uri,
            signing_key=self._open(row.id, "signing_key", row.webhook_signing_key_enc),
            webhook_token=row.webhook_token,
            version=row.version,
            last_error=row.last_error,
            created_at=row.created_at,
            updated_at=row.updated_at,
            connected_at=row.connected_at,
        )
