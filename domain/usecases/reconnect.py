"""Reconnect: mend the connection with the stored grant; OAuth only when that fails."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from domain.errors import ReauthorizationRequired
from domain.model import ConnectionStatus
from domain.ports import CalendlyApi, Clock, UnitOfWorkFactory
from domain.usecases.ensure_subscription import EnsureSubscription
from domain.usecases.refresh_access_token import RefreshAccessToken
from domain.usecases.start_connect import StartConnect, StartConnectCommand
from domain.usecases.views import ConnectionView


class ReconnectCommand(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    browser_binding: str | None = None
    completion_challenge: str | None = None


class ReconnectResult(msgspec.Struct, frozen=True, kw_only=True):
    """Either the mended connection, or where to send the user to authorize again."""

    outcome: Literal["reconnected", "authorization_required"]
    connection: ConnectionView | None = None
    authorization_url: str | None = None
    state: str | None = None
    expires_at: datetime | None = None
    switched_account: bool = False


class Reconnect:
    """Refresh (or simply use) the stored token, re-read the user, ensure the subscription.

    With nothing changed this reads Calendly twice (`/users/me`, the subscription list) and
    writes nothing, there or here. A token that expires within the margin is refreshed; a
    rejected token is refreshed once; `invalid_grant` turns the connection `needs_reauth` and
    the answer is an authorization URL for a full OAuth round trip.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        calendly: CalendlyApi,
        tokens: RefreshAccessToken,
        ensure_subscription: EnsureSubscription,
        start_connect: StartConnect,
        clock: Clock,
    ) -> None:
        self._uow = uow
        self._calendly = calendly
        self._tokens = tokens
        self._ensure_subscription = ensure_subscription
        self._start_connect = start_connect
        self._clock = clock

    async def __call__(self, command: ReconnectCommand) -> ReconnectResult:
        user_id = command.user_id
        async with self._uow(user_id) as uow:
            connection = await uow.connections.get(user_id)
        if connection is None or connection.status is not ConnectionStatus.ACTIVE:
            return await self._authorize(command)
        try:
            account = await self._tokens.call(user_id, self._calendly.current_user)
        except ReauthorizationRequired:
            return await self._authorize(command)
        switched = connection.account is not None and account.user_uri != (
            connection.account.user_uri
        )
        if connection.account != account:
            async with self._uow(user_id) as uow:
                latest = await uow.connections.get(user_id, for_update=True)
                if latest is None:
                    return await self._authorize(command)
                connection = await uow.connections.save(
                    latest.with_account(account, self._clock.now())
                )
                await uow.commit()
        connection = await self._ensure_subscription(connection)
        return ReconnectResult(
            outcome="reconnected",
            connection=ConnectionView.of(connection),
            switched_account=switched,
        )

    async def _authorize(self, command: ReconnectCommand) -> ReconnectResult:
        started = await self._start_connect(
            StartConnectCommand(
                user_id=command.user_id,
                browser_binding=command.browser_binding,
                completion_challenge=command.completion_challenge,
            )
        )
        return ReconnectResult(
            outcome="authorization_required",
            authorization_url=started.authorization_url,
            state=started.state,
            expires_at=started.expires_at,
        )
