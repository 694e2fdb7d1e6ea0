"""What the use cases answer about a connection: status, never secrets."""

from __future__ import annotations

from datetime import datetime

import msgspec

from domain.model import Connection, ConnectionStatus, WebhookStatus
from domain.ports import ListedConnection, MaintenanceTrouble


class ConnectionView(msgspec.Struct, frozen=True, kw_only=True):
    status: ConnectionStatus
    webhook_status: WebhookStatus
    calendly_user_uri: str | None
    organization_uri: str | None
    email: str | None
    name: str | None
    token_expires_at: datetime | None
    last_error: str | None
    connected_since: datetime
    updated_at: datetime
    # The worker's repeated failures on this connection (None: its last pass went well).
    maintenance: MaintenanceTrouble | None = None
    # When the worker last synced it with Calendly (how fresh a polled connection is).
    synced_at: datetime | None = None

    @classmethod
    def of(
        cls,
        connection: Connection,
        trouble: MaintenanceTrouble | None = None,
        *,
        synced_at: datetime | None = None,
    ) -> ConnectionView:
        account = connection.account
        return cls(
            status=connection.status,
            webhook_status=connection.webhook_status,
            calendly_user_uri=account.user_uri if account else None,
            organization_uri=account.organization_uri if account else None,
            email=account.email if account else None,
            name=account.name if account else None,
            token_expires_at=connection.tokens.expires_at if connection.tokens else None,
            last_error=connection.last_error,
            connected_since=connection.connected_at or connection.created_at,
            updated_at=connection.updated_at,
            maintenance=trouble,
            synced_at=synced_at,
        )

    @classmethod
    def listed(cls, row: ListedConnection) -> ConnectionView:
        """The same view of a connection read by the host's list (DR-30)."""
        account = row.account
        return cls(
            status=row.status,
            webhook_status=row.webhook_status,
            calendly_user_uri=account.user_uri if account else None,
            organization_uri=account.organization_uri if account else None,
            email=account.email if account else None,
            name=account.name if account else None,
            token_expires_at=row.token_expires_at,
            last_error=row.last_error,
            connected_since=row.connected_at or row.created_at,
            updated_at=row.updated_at,
            maintenance=row.trouble,
        )
