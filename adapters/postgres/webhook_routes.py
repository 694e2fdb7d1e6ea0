"""The webhook routes over psycopg 3: which connection a delivery belongs to, before any tenant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from domain.ports import Route, WebhookRouteRepository

from .sealing import TokenCipher, secret_context
from .session import ReadOnly, Session

# The routes, kept in step with the connections by a trigger, are readable outside any tenant;
# each carries its connection's sealed signing key (migration 0004). The trigger replaces a
# connection's route row whenever it may change (status, token, URI, user, key): the row's
# xmin, the transaction that wrote it, is the route's version (Route.version), which a write
# under the route checks (ROUTE_IS_CURRENT, DR-60).
ROUTE_BY_TOKEN = """
SELECT user_id, connection_id::text AS connection_id, calendly_user_uri, signing_key_enc,
       xmin::text AS version
FROM calendly_webhook_routes WHERE webhook_token = %s
"""  # noqa: S105 - SQL naming a column called token, not a password
# Many connections' routes by their tokens, in one statement (the group commit's lookups, DR-48).
ROUTES_BY_TOKENS = """
SELECT webhook_token, user_id, connection_id::text AS connection_id, calendly_user_uri,
       signing_key_enc, xmin::text AS version
FROM calendly_webhook_routes WHERE webhook_token = ANY(%s::text[])
"""
# The first of the given URIs (in their order) that a connected user holds: one index probe
# per URI, one round trip whatever their number.
ROUTE_BY_USER_URIS = """
SELECT user_id, connection_id::text AS connection_id, calendly_user_uri, signing_key_enc,
       xmin::text AS version
FROM calendly_webhook_routes WHERE calendly_user_uri = ANY(%(uris)s::text[])
ORDER BY array_position(%(uris)s::text[], calendly_user_uri) LIMIT 1
"""
# A connection without a URI has a route without one.
USERS_WITHOUT_ACCOUNT = """
SELECT user_id FROM calendly_webhook_routes WHERE calendly_user_uri IS NULL
ORDER BY user_id LIMIT %s
"""


class PostgresWebhookRouteRepository(WebhookRouteRepository):
    READ_ONLY: ClassVar[ReadOnly] = ReadOnly(
        reads=frozenset(
            {ROUTE_BY_TOKEN, ROUTES_BY_TOKENS, ROUTE_BY_USER_URIS, USERS_WITHOUT_ACCOUNT}
        )
    )

    def __init__(self, session: Session, cipher: TokenCipher) -> None:
        self._session = session
        self._cipher = cipher

    async def find(
        self, *, webhook_token: str | None = None, calendly_user_uris: Sequence[str] = ()
    ) -> Route | None:
        statement = route_statement(webhook_token, calendly_user_uris)
        if statement is None:
            return None
        cursor = await self._session.execute(*statement)
        return route_from_row(await cursor.fetchone(), self._cipher)

    async def users_without_account(self, limit: int = 10_000) -> list[str]:
        cursor = await self._session.execute(USERS_WITHOUT_ACCOUNT, (limit,))
        return [row["user_id"] for row in await cursor.fetchall()]


def route_statement(
    webhook_token: str | None, calendly_user_uris: Sequence[str]
) -> tuple[str, Any] | None:
    """The one lookup that finds a delivery's route (see `find`), or None when nothing can."""
    if webhook_token is not None:
        return ROUTE_BY_TOKEN, (webhook_token,)
    if calendly_user_uris:
        return ROUTE_BY_USER_URIS, {"uris": list(calendly_user_uris)}
    return None


def route_from_row(row: dict[str, Any] | None, cipher: TokenCipher) -> Route | None:
    """The route a `route_statement` answered (a dict row), its signing key unsealed."""
    if row is None:
        return None
    sealed = row["signing_key_enc"]
    return Route(
        user_id=row["user_id"],
        connection_id=row["connection_id"],
        calendly_user_uri=row["calendly_user_uri"] or "",
        signing_key=None
        if sealed is None
        else cipher.decrypt(sealed, context=secret_context(row["connection_id"], "signing_key")),
        version=row.get("version"),
    )
