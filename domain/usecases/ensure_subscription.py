"""Make sure a connection has exactly one working webhook subscription (idempotent)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from functools import partial

from domain.errors import (
    AlreadyExists,
    CalendlyError,
    PlanRequired,
    ResourceNotFound,
    TokenRejected,
)
from domain.model import Connection, WebhookStatus
from domain.ports import (
    CalendlyApi,
    Clock,
    NewSubscription,
    Randomness,
    Subscription,
    UnitOfWork,
    UnitOfWorkFactory,
)
from domain.secret import Secret
from domain.webhooks import SUBSCRIBED_EVENTS

from .refresh_access_token import RefreshAccessToken


class EnsureSubscription:
    """Adopt the connection's own subscription if it works, else create one; then tidy up.

    Each connection has its own callback URL (`<callback_base>/<webhook_token>`), so a 409
    can only mean a subscription of ours, and subscriptions of other connections are never
    touched. Stale ones at our callback base are deleted only after a working one is stored,
    so the user is never left without a subscription.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        calendly: CalendlyApi,
        tokens: RefreshAccessToken,
        clock: Clock,
        random: Randomness,
        callback_base: str,
        events: Iterable[str] = SUBSCRIBED_EVENTS,
    ) -> None:
        self._uow = uow
        self._calendly = calendly
        self._tokens = tokens
        self._clock = clock
        self._random = random
        self._callback_base = callback_base.rstrip("/")
        self._events = tuple(events)

    def callback_url(self, connection: Connection) -> str:
        return f"{self._callback_base}/{connection.webhook_token}"

    def _ours(self, subscription: Subscription) -> bool:
        url = subscription.callback_url
        return url == self._callback_base or url.startswith(f"{self._callback_base}/")

    def _works(self, connection: Connection, subscription: Subscription) -> bool:
        return (
            subscription.uri == connection.subscription_uri
            and connection.signing_key is not None
            and subscription.is_active
            and subscription.callback_url == self.callback_url(connection)
            and set(self._events) <= set(subscription.events)
        )

    async def __call__(self, connection: Connection) -> Connection:
        """Returns the connection as stored afterwards; Calendly is written to only if needed."""
        _, token = await self._tokens.access_token(connection.user_id)
        try:
            return await self._ensure(connection, token)
        except TokenRejected:
            refreshed = await self._tokens(connection.user_id, stale=token)
            assert refreshed.tokens is not None
            return await self._ensure(connection, refreshed.tokens.access_token)

    async def _ensure(self, connection: Connection, token: Secret) -> Connection:
        user_id = connection.user_id
        async with self._uow(user_id) as uow:
            # One maintainer per connection at a time, across processes. While it holds the
            # lock it uses no second database connection (the token was fetched before), so
            # waiters can never starve the pool of the connection the holder needs.
            await uow.lock(f"subscription:{connection.id}")
            current = await uow.connections.get(user_id)
            if current is None or current.account is None or not current.is_connected:
                return current or connection
            mine = await self._list_mine(current, token)
            keep = next((s for s in mine if self._works(current, s)), None)
            if keep is None:
                current, stale = await self._subscribe(uow, current, mine, token)
            else:
                if current.webhook_status is not WebhookStatus.ACTIVE:
                    activate = partial(
                        Connection.with_subscription,
                        uri=keep.uri,
                        signing_key=current.signing_key,
                        now=self._clock.now(),
                    )
                    current = await self._update(uow, user_id, activate)
                stale = [s for s in mine if s.uri != keep.uri]
            await uow.commit()
        await self._delete(user_id, stale)
        return current

    async def _subscribe(
        self, uow: UnitOfWork, current: Connection, mine: list[Subscription], token: Secret
    ) -> tuple[Connection, list[Subscription]]:
        user_id = current.user_id
        for _ in range(2):
            if any(s.callback_url == self.callback_url(current) for s in mine):
                # A subscription we cannot vouch for sits at our URL: move to a fresh URL
                # instead of deleting first, so deliveries never stop.
                move = partial(
                    Connection.with_webhook_token,
                    token=self._random.token(18),
                    now=self._clock.now(),
                )
                current = await self._update(uow, user_id, move)
            assert current.account is not None
            key = Secret(self._random.token(32))
            request = NewSubscription(
                callback_url=self.callback_url(current),
                events=self._events,
                organization_uri=current.account.organization_uri,
                user_uri=current.account.user_uri,
                signing_key=key,
            )
            try:
                created = await self._calendly.create_subscription(token, request)
            except PlanRequired:
                unavailable = partial(
                    Connection.without_subscription,
                    status=WebhookStatus.UNAVAILABLE_PLAN,
                    now=self._clock.now(),
                )
                return await self._update(uow, user_id, unavailable), []
            except AlreadyExists:
                mine = [*mine, *await self._list_mine(current, token)]
                continue
            adopt = partial(
                Connection.with_subscription,
                uri=created.uri,
                signing_key=key,
                now=self._clock.now(),
            )
            updated = await self._update(uow, user_id, adopt)
            return updated, [s for s in mine if s.uri != created.uri]
        raise AlreadyExists(409, None, "Calendly keeps answering 409 for a fresh callback URL")

    async def _list_mine(self, connection: Connection, token: Secret) -> list[Subscription]:
        account = connection.account
        assert account is not None
        found = await self._calendly.list_subscriptions(
            token, organization_uri=account.organization_uri, user_uri=account.user_uri
        )
        return [s for s in found if self._ours(s)]

    async def _update(
        self, uow: UnitOfWork, user_id: str, change: Callable[[Connection], Connection]
    ) -> Connection:
        latest = await uow.connections.get(user_id, for_update=True)
        assert latest is not None
        return await uow.connections.save(change(latest))

    async def _delete(self, user_id: str, stale: list[Subscription]) -> None:
        for subscription in stale:
            with contextlib.suppress(ResourceNotFound):
                await self._tokens.call(
                    user_id, partial(self._calendly.delete_subscription, uri=subscription.uri)
                )

    async def retire(self, previous: Connection) -> None:
        """Clean up after a connection switched Calendly accounts: its old subscriptions and
        grant. Best effort with the old tokens held in memory; nothing is stored."""
        if previous.tokens is None or previous.account is None:
            return
        token = previous.tokens.access_token
        try:
            found = await self._calendly.list_subscriptions(
                token,
                organization_uri=previous.account.organization_uri,
                user_uri=previous.account.user_uri,
            )
            for subscription in found:
                if self._ours(subscription):
                    with contextlib.suppress(ResourceNotFound):
                        await self._calendly.delete_subscription(token, subscription.uri)
            await self._calendly.revoke(previous.tokens.refresh_token)
        except CalendlyError:
            return
