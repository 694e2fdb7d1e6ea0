"""Erase a user on the host's behalf: disconnect at Calendly, then delete all they left here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import msgspec

from domain.errors import ConcurrentUpdate
from domain.ports import ErasedData, UnitOfWorkFactory
from domain.usecases.disconnect import DisconnectCommand, DisconnectResult

# The user connecting again between the disconnect and the deletion is retried this often.
_ATTEMPTS: Final = 3


class EraseUserResult(msgspec.Struct, frozen=True, kw_only=True):
    # What the disconnect did at Calendly (already_disconnected: there was nothing to do).
    disconnect: DisconnectResult
    erased: ErasedData


class EraseUser:
    """Idempotent: a user erased already, or never seen, answers with nothing removed.

    First the Disconnect use case (`disconnect`: the subscription is deleted and the grant
    revoked at Calendly); if Calendly cannot be reached while a subscription exists, that raises and
    nothing is deleted, so the host can simply try again. Then, in one transaction as the
    user, under the user's meetings lock (no delivery or sync can write a meeting of theirs
    meanwhile) and with the connection row locked, every row kept for the user is deleted. A
    user who connected again in between is disconnected again first: no live grant is ever
    dropped unrevoked.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        disconnect: Callable[[DisconnectCommand], Awaitable[DisconnectResult]],
    ) -> None:
        self._uow = uow
        self._disconnect = disconnect

    async def __call__(self, user_id: str) -> EraseUserResult:
        first: DisconnectResult | None = None
        for _ in range(_ATTEMPTS):
            disconnected = await self._disconnect(DisconnectCommand(user_id=user_id))
            first = first or disconnected
            async with self._uow(user_id) as uow:
                await uow.lock(f"meetings:{user_id}")
                connection = await uow.connections.get(user_id, for_update=True)
                if connection is not None and connection.is_connected:
                    continue  # connected again meanwhile: revoke that grant too
                erased = await uow.erasure.erase(user_id)
                await uow.commit()
            return EraseUserResult(disconnect=first, erased=erased)
        raise ConcurrentUpdate("the user kept connecting again while being erased; try again")
