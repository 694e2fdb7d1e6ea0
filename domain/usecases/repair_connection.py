"""Repair a connection inherited without its Calendly user URI (the seed's stuck users)."""

from __future__ import annotations

from typing import Literal

import msgspec

from domain.errors import (
    AccountAlreadyConnected,
    CalendlyError,
    ConcurrentUpdate,
    ReauthorizationRequired,
)
from domain.model import CalendlyAccount, ConnectionStatus
from domain.ports import CalendlyApi, Clock, UnitOfWorkFactory
from domain.usecases.ensure_subscription import EnsureSubscription
from domain.usecases.refresh_access_token import RefreshAccessToken

RepairAction = Literal[
    "repaired", "would_repair", "already_fine", "needs_reauth", "conflict", "failed"
]


class RepairResult(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    action: RepairAction
    detail: str = ""


class RepairConnection:
    """Refresh the stored token, read `/users/me`, record the URI, ensure the subscription.

    Safe to run twice and while the service runs: a connection that has its URI is left
    alone, refreshes are serialised as everywhere else, and a connection whose grant is dead
    becomes `needs_reauth` (its user sees a Reconnect banner). A row whose Calendly account
    another app user has connected meanwhile is left as it is and answered as `conflict`:
    which of the two keeps the account is for a person to decide.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        calendly: CalendlyApi,
        tokens: RefreshAccessToken,
        ensure_subscription: EnsureSubscription,
        clock: Clock,
    ) -> None:
        self._uow = uow
        self._calendly = calendly
        self._tokens = tokens
        self._ensure = ensure_subscription
        self._clock = clock

    async def candidates(self) -> list[str]:
        async with self._uow() as uow:
            return await uow.routes.users_without_account()

    async def __call__(self, user_id: str, *, dry_run: bool = False) -> RepairResult:
        async with self._uow(user_id) as uow:
            connection = await uow.connections.get(user_id)
        if connection is None or connection.status is ConnectionStatus.DISCONNECTED:
            return RepairResult(user_id=user_id, action="already_fine", detail="not connected")
        if connection.account is not None:
            return RepairResult(user_id=user_id, action="already_fine")
        if dry_run:
            return RepairResult(
                user_id=user_id, action="would_repair", detail="the Calendly user URI is missing"
            )
        if connection.tokens is None:
            async with self._uow(user_id) as uow:
                latest = await uow.connections.get(user_id, for_update=True)
                if latest is not None:
                    await uow.connections.save(
                        latest.needing_reauth("no stored grant", self._clock.now())
                    )
                    await uow.commit()
            return RepairResult(user_id=user_id, action="needs_reauth", detail="no stored grant")
        try:
            # "By refreshing the stored token": proves the grant still works.
            await self._tokens(user_id, stale=connection.tokens.access_token)
            account = await self._tokens.call(user_id, self._calendly.current_user)
        except ReauthorizationRequired as exc:
            return RepairResult(user_id=user_id, action="needs_reauth", detail=exc.reason)
        except CalendlyError as exc:
            return RepairResult(
                user_id=user_id, action="failed", detail=f"Calendly answered {exc.status}"
            )
        try:
            async with self._uow(user_id) as uow:
                latest = await uow.connections.get(user_id, for_update=True)
                if latest is None:
                    return RepairResult(user_id=user_id, action="already_fine", detail="gone")
                saved = await uow.connections.save(latest.with_account(account, self._clock.now()))
                await uow.commit()
        except AccountAlreadyConnected:
            return await self._conflict(user_id, account)
        except ConcurrentUpdate:
            return RepairResult(
                user_id=user_id,
                action="failed",
                detail="the connection changed meanwhile; run repair-connections again",
            )
        try:
            saved = await self._ensure(saved)
        except CalendlyError as exc:
            return RepairResult(
                user_id=user_id,
                action="repaired",
                detail=f"URI recorded; subscription left to the worker ({exc.status})",
            )
        return RepairResult(
            user_id=user_id, action="repaired", detail=f"webhooks {saved.webhook_status.value}"
        )

    async def _conflict(self, user_id: str, account: CalendlyAccount) -> RepairResult:
        """The row's grant is for an account that webhooks already route to another user."""
        async with self._uow() as uow:
            owner = await uow.routes.find(calendly_user_uris=(account.user_uri,))
        holder = f"app user {owner.user_id!r}" if owner is not None else "another app user"
        return RepairResult(
            user_id=user_id,
            action="conflict",
            detail=f"its Calendly account {account.user_uri} is already connected to {holder}, "
            "and one Calendly account can belong to one app user only; disconnect one of the "
            "two (its user can then connect another Calendly account) and run "
            "repair-connections again",
        )
