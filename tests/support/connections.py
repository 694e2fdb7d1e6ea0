"""Connections to store: numbered builders and a committing `add`, for the storage tests.

Shared by the repository contract (fake and Postgres) and the Postgres-only suites.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from domain.model import CalendlyAccount, Connection, ConnectionStatus, TokenSet, WebhookStatus
from domain.ports import UnitOfWorkFactory
from domain.secret import Secret

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
EV = "https://api.calendly.test/scheduled_events/"
CID_A = "00000000-0000-0000-0000-00000000000a"
CID_B = "00000000-0000-0000-0000-00000000000b"


def cid(n: int) -> str:
    """The `n`-th connection id (a UUID)."""
    return f"00000000-0000-0000-0000-{n:012d}"


def owner_sql(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """One statement as the database's owner at `url` (bypasses row-level security)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query.encode(), params)
        return cursor.fetchall() if cursor.description else []


def account(n: int) -> CalendlyAccount:
    return CalendlyAccount(
        user_uri=f"https://api.calendly.test/users/u{n}",
        organization_uri=f"https://api.calendly.test/organizations/o{n}",
        email=f"u{n}@example.com",
        name=f"User {n}",
    )


def connection(user_id: str, n: int, cid: str) -> Connection:
    """An active connection of `user_id` to Calendly account `n`, with tokens and a webhook."""
    return Connection(
        id=cid,
        user_id=user_id,
        status=ConnectionStatus.ACTIVE,
        account=account(n),
        tokens=TokenSet(
            access_token=Secret(f"at-{n}"), refresh_token=Secret(f"rt-{n}"), expires_at=T0
        ),
        signing_key=Secret(f"key-{n}"),
        subscription_uri=f"https://api.calendly.test/webhook_subscriptions/s{n}",
        webhook_status=WebhookStatus.ACTIVE,
        webhook_token=f"token-{user_id}{n}",
        created_at=T0,
        updated_at=T0,
    )


async def add(uow_factory: UnitOfWorkFactory, c: Connection) -> Connection:
    """Store `c` in its owner's unit of work and commit; the stored value."""
    async with uow_factory(c.user_id) as uow:
        stored = await uow.connections.add(c)
        await uow.commit()
    return stored
