"""Hand out usable access tokens: a call refreshes one near its expiry first, one at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from domain.errors import (
    ConnectionNotFound,
    InvalidGrant,
    ReauthorizationRequired,
    StorageUnavailable,
    TokenRejected,
)
from domain.model import Connection, ConnectionStatus, TokenSet
from domain.ports import CalendlyApi, Clock, UnitOfWorkFactory
from domain.secret import Secret

T = TypeVar("T")
DEFAULT_MARGIN = timedelta(minutes=5)
# How long a caller waits for a new grant to be stored after the database failed, before it
# is told the database is unavailable (the grant keeps being stored in the background).
DEFAULT_STORE_WAIT = 5.0
Sleep = Callable[[float], Awaitable[None]]


class RefreshAccessToken:
    """Hands out working access tokens for a user's connection.

    Refresh tokens are single-use, so two processes refreshing at once would kill the
    connection. A refresh therefore runs under the connection's row lock, re-reads the row
    after taking it (a sibling's fresh token is reused), and commits the rotated pair before
    anyone uses it.

    Calendly rotates the refresh token on every refresh, so a pair it has issued is the only
    way back in. If the database fails between Calendly's answer and the commit, the pair is
    kept in this process and stored as soon as the database answers again (unless the row
    moved on meanwhile, e.g. the user connected again); until then this process's callers for
    that connection wait for it instead of refreshing with the spent token.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        calendly: CalendlyApi,
        clock: Clock,
        margin: timedelta = DEFAULT_MARGIN,
        store_wait: float = DEFAULT_STORE_WAIT,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._uow = uow
        self._calendly = calendly
        self._clock = clock
        self._margin = margin
        self._store_wait = store_wait
        self._sleep = sleep
        # Grants Calendly issued that the database has not taken yet, by user id.
        self._unstored: dict[str, asyncio.Task[Connection | None]] = {}

    async def __call__(self, user_id: str, *, stale: Secret | None = None) -> Connection:
        """Refresh the connection's tokens unless someone already did.

        `stale` is an access token the caller saw rejected; without it the refresh happens
        only when the token expires within the margin. Raises ReauthorizationRequired when
        Calendly no longer accepts the grant (the connection is then `needs_reauth`).
        """
        await self.settle(user_id)
        spent: Secret | None = None
        granted: TokenSet | None = None
        try:
            async with self._uow(user_id) as uow:
                connection = await uow.connections.get(user_id, for_update=True)
                usable = self._usable(connection, user_id)
                tokens = usable.tokens
                assert tokens is not None  # _usable guarantees it
                now = self._clock.now()
                sibling_refreshed = stale is not None and tokens.access_token != stale
                if not usable.needs_refresh(now, self._margin) and (
                    stale is None or sibling_refreshed
                ):
                    return usable
                try:
                    spent = tokens.refresh_token
                    granted = (await self._calendly.refresh(spent)).tokens
                except InvalidGrant as exc:
                    await uow.connections.save(
                        usable.needing_reauth("Calendly no longer accepts the refresh token", now)
                    )
                    await uow.commit()
                    raise ReauthorizationRequired(
                        user_id, "the refresh token was rejected"
                    ) from exc
                saved = await uow.connections.save(usable.with_tokens(granted, now))
                await uow.commit()
                return saved
        except StorageUnavailable:
            if granted is None or spent is None:
                raise  # nothing was issued: nothing to keep
            stored = await self._keep(user_id, spent, granted)
            if stored is None:
                raise ConnectionNotFound(user_id) from None
            return stored

    async def _keep(self, user_id: str, spent: Secret, granted: TokenSet) -> Connection | None:
        """Store `granted` as soon as the database takes it; wait a little for that here."""
        task = asyncio.create_task(self._store_until_done(user_id, spent, granted))
        self._unstored[user_id] = task
        task.add_done_callback(lambda _: self._forget(user_id, task))
        done, _ = await asyncio.wait({task}, timeout=self._store_wait)
        if not done:
            raise StorageUnavailable("the database is down; the new grant is kept until it returns")
        return task.result()

    def _forget(self, user_id: str, task: asyncio.Task[Connection | None]) -> None:
        if self._unstored.get(user_id) is task:
            del self._unstored[user_id]

    async def _store_until_done(
        self, user_id: str, spent: Secret, granted: TokenSet
    ) -> Connection | None:
        """Store the grant that replaced `spent`, retrying with back-off while storage is down.

        Stored only if the row still holds `spent` (its refresh token is what Calendly just
        rotated): then this grant is the newest, even if another process marked the
        connection as needing re-authorization after its own attempt with `spent` failed.
        Returns the connection as stored, or as found when it moved on (None if gone).
        """
        delay = 0.1
        while True:
            try:
                async with self._uow(user_id) as uow:
                    current = await uow.connections.get(user_id, for_update=True)
                    if (
                        current is None
                        or current.status is ConnectionStatus.DISCONNECTED
                        or current.tokens is None
                        or current.tokens.refresh_token != spent
                    ):
                        return current
                    saved = await uow.connections.save(
                        current.with_tokens(granted, self._clock.now())
                    )
                    await uow.commit()
                    return saved
            except StorageUnavailable:
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)

    async def drain(self, within: float) -> list[str]:
        """Before the process stops: wait up to `within` s for kept grants to be stored.

        Returns the users whose grant could not be stored (it is lost with the process; they
        will have to approve the app again): the caller says so in its log.
        """
        kept = dict(self._unstored)
        if not kept:
            return []
        _, pending = await asyncio.wait(kept.values(), timeout=within)
        for task in pending:
            task.cancel()
        return sorted(user_id for user_id, task in kept.items() if task in pending)

    async def settle(self, user_id: str) -> None:
        """Let a kept grant reach the database before anyone reads the spent token.

        Raises StorageUnavailable if it is still not stored after the store wait."""
        task = self._unstored.get(user_id)
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=self._store_wait)
        if not done:
            raise StorageUnavailable("the database is down; the new grant is kept until it returns")

    async def access_token(self, user_id: str) -> tuple[Connection, Secret]:
        """The connection and an access token that is good for at least the margin."""
        await self.settle(user_id)
        async with self._uow(user_id) as uow:
            connection = self._usable(await uow.connections.get(user_id), user_id)
        if connection.needs_refresh(self._clock.now(), self._margin):
            connection = await self(user_id)
        assert connection.tokens is not None
        return connection, connection.tokens.access_token

    async def check_grant(self, user_id: str) -> None:
        """One call that proves Calendly still honours the grant (DR-45): the refresh, when the
        token is due for one anyway (a refresh token Calendly took is a live grant), else a
        read of the user with the access token. Raises ReauthorizationRequired when the grant
        is gone (the connection is then `needs_reauth`), CalendlyError for other answers."""
        await self.settle(user_id)
        async with self._uow(user_id) as uow:
            connection = self._usable(await uow.connections.get(user_id), user_id)
        if connection.needs_refresh(self._clock.now(), self._margin):
            await self(user_id)
            return
        await self.call(user_id, self._calendly.current_user)

    async def call(self, user_id: str, action: Callable[[Secret], Awaitable[T]]) -> T:
        """Run `action` with a fresh token; after a 401, refresh once and run it again. A 401
        for the fresh token too means Calendly no longer honours the grant whatever it says at
        the token endpoint: the connection is then `needs_reauth` (unless it moved on
        meanwhile) and ReauthorizationRequired is raised."""
        _, token = await self.access_token(user_id)
        try:
            return await action(token)
        except TokenRejected:
            connection = await self(user_id, stale=token)
            assert connection.tokens is not None
            fresh = connection.tokens.access_token
        try:
            return await action(fresh)
        except TokenRejected as exc:
            await self._refused(user_id, fresh)
            raise ReauthorizationRequired(
                user_id, "Calendly refused a freshly issued access token"
            ) from exc

    async def _refused(self, user_id: str, token: Secret) -> None:
        """Mark the connection `needs_reauth`, after one re-read: only if `token` is still the
        stored one (a sibling's refresh or a reconnect since is left alone)."""
        async with self._uow(user_id) as uow:
            current = await uow.connections.get(user_id, for_update=True)
            if (
                current is None
                or current.status is not ConnectionStatus.ACTIVE
                or current.tokens is None
                or current.tokens.access_token != token
            ):
                return
            await uow.connections.save(
                current.needing_reauth(
                    "Calendly refuses the connection's access tokens", self._clock.now()
                )
            )
            await uow.commit()

    @staticmethod
    def _usable(connection: Connection | None, user_id: str) -> Connection:
        if connection is None or connection.status is ConnectionStatus.DISCONNECTED:
            raise ConnectionNotFound(user_id)
        if connection.status is ConnectionStatus.NEEDS_REAUTH or connection.tokens is None:
            raise ReauthorizationRequired(user_id, connection.last_error or "not authorized")
        return connection
