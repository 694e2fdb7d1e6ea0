"""Disconnect: delete the subscription at Calendly, revoke the grant, wipe the secrets."""

from __future__ import annotations

from functools import partial

import msgspec

from domain.errors import (
    CalendlyError,
    ReauthorizationRequired,
    ResourceNotFound,
    TokenRejected,
)
from domain.model import Connection, ConnectionStatus
from domain.ports import CalendlyApi, Clock, UnitOfWorkFactory
from domain.usecases.refresh_access_token import RefreshAccessToken
from domain.usecases.views import ConnectionView


class DisconnectCommand(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str


class DisconnectResult(msgspec.Struct, frozen=True, kw_only=True):
    connection: ConnectionView | None
    subscription_deleted: bool = False
    # Calendly could not be told to forget the grant; the secrets are wiped here anyway.
    revoke_failed: bool = False
    already_disconnected: bool = False


class Disconnect:
    """Meeting history is kept; a second disconnect answers the same and calls nobody.

    If Calendly is unreachable while the subscription still exists, nothing is wiped and
    CalendlyUnavailable is raised, so the user can try again with the tokens still there.
    A failed revoke is reported in the result (the entrypoint logs it), not fatal.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        calendly: CalendlyApi,
        tokens: RefreshAccessToken,
        clock: Clock,
    ) -> None:
        self._uow = uow
        self._calendly = calendly
        self._tokens = tokens
        self._clock = clock

    async def __call__(self, command: DisconnectCommand) -> DisconnectResult:
        user_id = command.user_id
        # A grant this process still keeps (issued while the database failed) is stored
        # first, so the one revoked below is the live one, not the spent one.
        await self._tokens.settle(user_id)
        async with self._uow(user_id) as uow:
            connection = await uow.connections.get(user_id)
        if connection is None or connection.status is ConnectionStatus.DISCONNECTED:
            return DisconnectResult(
                connection=ConnectionView.of(connection) if connection else None,
                already_disconnected=True,
            )
        deleted = await self._delete_subscription(connection)
        async with self._uow(user_id) as uow:
            latest = await uow.connections.get(user_id, for_update=True)
            if latest is None or latest.status is ConnectionStatus.DISCONNECTED:
                return DisconnectResult(
                    connection=ConnectionView.of(latest) if latest else None,
                    already_disconnected=True,
                )
            grant = latest.tokens
            saved = await uow.connections.save(latest.disconnected(self._clock.now()))
            await uow.commit()
        revoke_failed = False
        if grant is not None:
            try:
                # Revoking the refresh token revokes its pair.
                await self._calendly.revoke(grant.refresh_token)
            except CalendlyError:
                revoke_failed = True
        return DisconnectResult(
            connection=ConnectionView.of(saved),
            subscription_deleted=deleted,
            revoke_failed=revoke_failed,
        )

    async def _delete_subscription(self, connection: Connection) -> bool:
        uri = connection.subscription_uri
        if uri is None:
            return False
        try:
            await self._tokens.call(
                connection.user_id, partial(self._calendly.delete_subscription, uri=uri)
            )
        except ResourceNotFound:
            return True
        except (ReauthorizationRequired, TokenRejected):
            # Without a working grant nobody can delete it; Calendly stops delivering to an
            # app whose grant is gone, and deliveries to a retired URL are stored aside.
            return False
        return True
