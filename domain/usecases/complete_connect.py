"""Finish connecting Calendly: check `state`, redeem the code, store the connection, subscribe."""

from __future__ import annotations

import contextlib

import msgspec

from domain.errors import (
    AccountAlreadyConnected,
    AuthorizationDenied,
    AuthorizationStateInvalid,
    CalendlyError,
    InvalidGrant,
)
from domain.model import (
    CalendlyAccount,
    Connection,
    ConnectionStatus,
    PendingAuthorization,
    WebhookStatus,
)
from domain.ports import CalendlyApi, Clock, GrantedTokens, Randomness, UnitOfWorkFactory

from .ensure_subscription import EnsureSubscription
from .start_connect import binding_digest, verifier_matches
from .views import ConnectionView


class CompleteConnectCommand(msgspec.Struct, frozen=True, kw_only=True):
    state: str
    code: str | None = None
    # Set when Calendly redirected back with an error instead of a code (e.g. access_denied).
    error: str | None = None
    error_description: str | None = None
    # Who is finishing: the signed-in user (API clients) and/or the browser-binding cookie.
    user_id: str | None = None
    browser_binding: str | None = None
    # The page that started the round trip, completing it after a hand-off: with `user_id`.
    completion_verifier: str | None = None


class CompleteConnectResult(msgspec.Struct, frozen=True, kw_only=True):
    connection: ConnectionView
    switched_account: bool = False


class HandOff(msgspec.Struct, frozen=True, kw_only=True):
    """Calendly's answer is for the page that started the round trip to complete (DR-28)."""

    state: str
    code: str


class CompleteConnect:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        calendly: CalendlyApi,
        clock: Clock,
        random: Randomness,
        ensure_subscription: EnsureSubscription,
        redirect_uri: str,
    ) -> None:
        self._uow = uow
        self._calendly = calendly
        self._clock = clock
        self._random = random
        self._ensure_subscription = ensure_subscription
        self._redirect_uri = redirect_uri

    async def at_callback(self, command: CompleteConnectCommand) -> CompleteConnectResult | HandOff:
        """Where Calendly sends the browser back: complete here, or hand the code to the page.

        The round trip is completed here when this browser proves it started it (the binding
        cookie, first-party on this service's origin) or the caller is signed in. Otherwise,
        if the starting page sent a completion challenge, the code is handed to that page,
        which completes it with its verifier and the user's token; the state stays pending
        until then. Anything else is refused: the state was issued to another browser.
        """
        if command.user_id is None and command.completion_verifier is None:
            pending = await self._peek_state(command.state)
            if not self._same_browser(pending, command) and pending.completion_challenge:
                if pending.expired(self._clock.now()):
                    await self._discard(pending.state)
                    raise AuthorizationStateInvalid("the authorization request expired")
                if command.error is not None or not command.code:
                    await self._discard(pending.state)
                    raise AuthorizationDenied(command.error or "no_code", command.error_description)
                return HandOff(state=pending.state, code=command.code)
        return await self(command)

    async def __call__(self, command: CompleteConnectCommand) -> CompleteConnectResult:
        pending = await self._take_state(command)
        if command.error is not None or not command.code:
            raise AuthorizationDenied(command.error or "no_code", command.error_description)
        try:
            granted = await self._calendly.exchange_code(
                code=command.code,
                redirect_uri=self._redirect_uri,
                code_verifier=pending.code_verifier,
            )
        except InvalidGrant as exc:
            raise AuthorizationStateInvalid("the authorization code is invalid or used") from exc
        account = await self._account(granted)
        user_id = pending.user_id
        try:
            connection, previous = await self._store(user_id, granted, account)
        except AccountAlreadyConnected:
            # We will not keep the grant, so give it back instead of leaving it live.
            await self._revoke_quietly(granted)
            raise
        connection = await self._ensure_subscription(connection)
        switched = (
            previous is not None
            and previous.account is not None
            and (previous.account.user_uri != account.user_uri)
        )
        if switched and previous is not None:
            await self._ensure_subscription.retire(previous)
        return CompleteConnectResult(
            connection=ConnectionView.of(connection), switched_account=switched
        )

    async def _peek_state(self, state: str) -> PendingAuthorization:
        async with self._uow() as uow:
            pending = await uow.authorizations.peek(state)
        if pending is None:
            raise AuthorizationStateInvalid("unknown or already used state")
        return pending

    async def _discard(self, state: str) -> None:
        async with self._uow() as uow:
            await uow.authorizations.take(state)
            await uow.commit()

    async def _take_state(self, command: CompleteConnectCommand) -> PendingAuthorization:
        if command.completion_verifier is not None:
            # A hand-off: only the page holding the verifier, signed in as the user, completes.
            # Checked before the state is taken, so a wrong guess cannot spend it.
            self._check_hand_off(await self._peek_state(command.state), command)
        async with self._uow() as uow:
            pending = await uow.authorizations.take(command.state)
            await uow.commit()
        if pending is None:
            raise AuthorizationStateInvalid("unknown or already used state")
        if pending.expired(self._clock.now()):
            raise AuthorizationStateInvalid("the authorization request expired")
        if command.user_id is not None and command.user_id != pending.user_id:
            raise AuthorizationStateInvalid("the state belongs to another user")
        if command.completion_verifier is not None:
            self._check_hand_off(pending, command)
        elif command.user_id is None and not self._same_browser(pending, command):
            raise AuthorizationStateInvalid("the state was issued to another browser")
        return pending

    @staticmethod
    def _check_hand_off(pending: PendingAuthorization, command: CompleteConnectCommand) -> None:
        if command.user_id is None or command.user_id != pending.user_id:
            raise AuthorizationStateInvalid("the state belongs to another user")
        verifier = command.completion_verifier
        if (
            verifier is None
            or pending.completion_challenge is None
            or not verifier_matches(verifier, pending.completion_challenge)
        ):
            raise AuthorizationStateInvalid(
                "the completion verifier does not match the one the connect started with"
            )

    @staticmethod
    def _same_browser(pending: PendingAuthorization, command: CompleteConnectCommand) -> bool:
        return (
            pending.browser_binding is not None
            and command.browser_binding is not None
            and binding_digest(command.browser_binding) == pending.browser_binding
        )

    async def _account(self, granted: GrantedTokens) -> CalendlyAccount:
        """Read the user; without a user URI nothing is stored (webhooks could not route)."""
        try:
            me = await self._calendly.current_user(granted.tokens.access_token)
        except CalendlyError:
            await self._revoke_quietly(granted)
            raise
        if me.user_uri != granted.owner_uri:
            await self._revoke_quietly(granted)
            raise AuthorizationStateInvalid("Calendly reported two different users for one grant")
        return me

    async def _store(
        self, user_id: str, granted: GrantedTokens, account: CalendlyAccount
    ) -> tuple[Connection, Connection | None]:
        now = self._clock.now()
        async with self._uow(user_id) as uow:
            previous = await uow.connections.get(user_id, for_update=True)
            if previous is None:
                connection = await uow.connections.add(
                    Connection(
                        id=self._random.uuid(),
                        user_id=user_id,
                        status=ConnectionStatus.ACTIVE,
                        account=account,
                        tokens=granted.tokens,
                        webhook_token=self._random.token(18),
                        created_at=now,
                        updated_at=now,
                        connected_at=now,
                    )
                )
            else:
                same_account = previous.account is not None and (
                    previous.account.user_uri == account.user_uri
                )
                base = (
                    previous
                    if same_account
                    else previous.without_subscription(
                        WebhookStatus.MISSING, now
                    ).with_webhook_token(self._random.token(18), now)
                )
                anew = not same_account or not previous.is_connected
                connection = await uow.connections.save(
                    base.with_account(account, now)
                    .with_tokens(granted.tokens, now)
                    .connected_since(now if anew else previous.connected_at)
                )
            await uow.commit()
        stale = previous if previous is not None and previous.is_connected else None
        return connection, stale

    async def _revoke_quietly(self, granted: GrantedTokens) -> None:
        # Best effort: the grant is ours to give back, but failing to is not the user's
        # problem; the pair then simply stays unused.
        with contextlib.suppress(CalendlyError):
            await self._calendly.revoke(granted.tokens.refresh_token)
