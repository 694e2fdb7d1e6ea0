"""Keep a connection's access token usable: refresh ahead of expiry, one refresh at a time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from domain.errors import ConnectionNotFound, InvalidGrant, ReauthorizationRequired, TokenRejected
from domain.model import Connection, ConnectionStatus
from domain.ports import CalendlyApi, Clock, UnitOfWorkFactory
from domain.secret import Secret

T = TypeVar("T")
DEFAULT_MARGIN = timedelta(minutes=5)


class RefreshAccessToken:
    """Hands out working access tokens for a user's connection.

    Refresh tokens are single-use, so two processes refreshing at once would kill the
    connection. A refresh therefore runs under the connection's row lock, re-reads the row
    after taking it (a sibling's fresh token is reused), and commits the rotated pair before
    anyone uses it.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        calendly: CalendlyApi,
        clock: Clock,
        margin: timedelta = DEFAULT_MARGIN,
    ) -> None:
        self._uow = uow
        self._calendly = calendly
        self._clock = clock
        self._margin = margin

    async def __call__(self, user_id: str, *, stale: Secret | None = None) -> Connection:
        """Refresh the connection's tokens unless someone already did.

        `stale` is an access token the caller saw rejected; without it the refresh happens
        only when the token expires within the margin. Raises ReauthorizationRequired when
        Calendly no longer accepts the grant (the connection is then `needs_reauth`).
        """
        async with self._uow(user_id) as uow:
            connection = await uow.connections.get(user_id, for_update=True)
            usable = self._usable(connection, user_id)
            tokens = usable.tokens
            assert tokens is not None  # _usable guarantees it
            now = self._clock.now()
            sibling_refreshed = stale is not None and tokens.access_token != stale
            if not usable.needs_refresh(now, self._margin) and (stale is None or sibling_refreshed):
                return usable
            try:
                granted = await self._calendly.refresh(tokens.refresh_token)
            except InvalidGrant as exc:
                await uow.connections.save(
                    usable.needing_reauth("Calendly no longer accepts the refresh token", now)
                )
                await uow.commit()
                raise ReauthorizationRequired(user_id, "the refresh token was rejected") from exc
            saved = await uow.connections.save(usable.with_tokens(granted.tokens, now))
            await uow.commit()
            return saved

    async def access_token(self, user_id: str) -> tuple[Connection, Secret]:
        """The connection and an access token that is good for at least the margin."""
        async with self._uow(user_id) as uow:
            connection = self._usable(await uow.connections.get(user_id), user_id)
        if connection.needs_refresh(self._clock.now(), self._margin):
            connection = await self(user_id)
        assert connection.tokens is not None
        return connection, connection.tokens.access_token

    async def call(self, user_id: str, action: Callable[[Secret], Awaitable[T]]) -> T:
        """Run `action` with a fresh token; after a 401, refresh once and run it again."""
        _, token = await self.access_token(user_id)
        try:
            return await action(token)
        except TokenRejected:
            connection = await self(user_id, stale=token)
            assert connection.tokens is not None
            return await action(connection.tokens.access_token)

    @staticmethod
    def _usable(connection: Connection | None, user_id: str) -> Connection:
        if connection is None or connection.status is ConnectionStatus.DISCONNECTED:
            raise ConnectionNotFound(user_id)
        if connection.status is ConnectionStatus.NEEDS_REAUTH or connection.tokens is None:
            raise ReauthorizationRequired(user_id, connection.last_error or "not authorized")
        return connection
