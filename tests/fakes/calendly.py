"""An in-memory Calendly for unit tests: records calls, can be told to fail."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlencode

from domain.errors import (
    AlreadyExists,
    CalendlyError,
    InvalidGrant,
    PlanRequired,
    ResourceNotFound,
    TokenRejected,
)
from domain.model import CalendlyAccount, TokenSet
from domain.ports import CalendlyApi, Clock, GrantedTokens, NewSubscription, Subscription
from domain.secret import Secret
from domain.usecases.start_connect import pkce_challenge

BASE = "https://api.calendly.test"


@dataclass
class FakeUser:
    uuid: str
    email: str
    name: str
    paid: bool = True

    @property
    def uri(self) -> str:
        return f"{BASE}/users/{self.uuid}"

    @property
    def organization_uri(self) -> str:
        return f"{BASE}/organizations/org-{self.uuid}"


@dataclass
class FakeGrant:
    user: FakeUser
    access: str
    refresh: str
    expires_at: datetime
    refresh_used: bool = False
    revoked: bool = False


@dataclass
class FakeSubscription:
    uri: str
    callback_url: str
    events: tuple[str, ...]
    user: FakeUser
    signing_key: str
    state: str = "active"


@dataclass
class FakeCode:
    user: FakeUser
    challenge: str
    redirect_uri: str
    used: bool = False


@dataclass
class FakeCalendlyApi(CalendlyApi):
    """Behaves like the sandbox for what the use cases need; contract tests check that."""

    clock: Clock
    users: dict[str, FakeUser] = field(default_factory=dict)
    grants: list[FakeGrant] = field(default_factory=list)
    subscriptions: dict[str, FakeSubscription] = field(default_factory=dict)
    codes: dict[str, FakeCode] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    failures: dict[str, list[CalendlyError]] = field(default_factory=dict)
    token_ttl: timedelta = timedelta(hours=2)
    # Subscriptions created or deleted (refused attempts change nothing, so they do not count).
    mutations: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # ---------------------------------------------------------- steering
    def add_user(self, email: str, *, paid: bool = True, name: str = "Host") -> FakeUser:
        user = FakeUser(uuid=f"u{next(self._ids)}", email=email, name=name, paid=paid)
        self.users[user.uuid] = user
        return user

    def issue_code(self, user: FakeUser, challenge: str, redirect_uri: str) -> str:
        code = f"code-{next(self._ids)}"
        self.codes[code] = FakeCode(user=user, challenge=challenge, redirect_uri=redirect_uri)
        return code

    def fail_next(self, method: str, error: CalendlyError, times: int = 1) -> None:
        self.failures.setdefault(method, []).extend([error] * times)

    def count(self, method: str | None = None) -> int:
        return len(self.calls) if method is None else Counter(self.calls)[method]

    def writes(self) -> int:
        return self.mutations

    def expire_tokens(self, user: FakeUser) -> None:
        for grant in self.grants:
            if grant.user is user:
                grant.expires_at = self.clock.now() - timedelta(seconds=1)

    def revoke_all(self, user: FakeUser) -> None:
        for grant in self.grants:
            if grant.user is user:
                grant.revoked = True

    def active_subscriptions(self, user: FakeUser) -> list[FakeSubscription]:
        return [s for s in self.subscriptions.values() if s.user is user and s.state == "active"]

    # --------------------------------------------------------- internals
    def _enter(self, method: str) -> None:
        self.calls.append(method)
        queued = self.failures.get(method)
        if queued:
            raise queued.pop(0)

    def _grant(self, user: FakeUser) -> GrantedTokens:
        n = next(self._ids)
        grant = FakeGrant(
            user=user,
            access=f"at-{n}",
            refresh=f"rt-{n}",
            expires_at=self.clock.now() + self.token_ttl,
        )
        self.grants.append(grant)
        return GrantedTokens(
            tokens=TokenSet(
                access_token=Secret(grant.access),
                refresh_token=Secret(grant.refresh),
                expires_at=grant.expires_at,
            ),
            owner_uri=user.uri,
            organization_uri=user.organization_uri,
        )

    def _bearer(self, token: Secret) -> FakeUser:
        for grant in self.grants:
            if grant.access == token.reveal():
                if grant.revoked or grant.expires_at <= self.clock.now():
                    break
                return grant.user
        raise TokenRejected(401, {"title": "Unauthenticated"})

    # -------------------------------------------------------------- port
    def authorization_url(self, *, state: str, code_challenge: str, redirect_uri: str) -> str:
        query = urlencode(
            {"state": state, "code_challenge": code_challenge, "redirect_uri": redirect_uri}
        )
        return f"https://auth.calendly.test/oauth/authorize?{query}"

    async def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: Secret
    ) -> GrantedTokens:
        self._enter("exchange_code")
        found = self.codes.get(code)
        if (
            found is None
            or found.used
            or found.redirect_uri != redirect_uri
            or pkce_challenge(code_verifier) != found.challenge
        ):
            raise InvalidGrant(400, {"error": "invalid_grant"})
        found.used = True
        return self._grant(found.user)

    async def refresh(self, refresh_token: Secret) -> GrantedTokens:
        self._enter("refresh")
        for grant in self.grants:
            if grant.refresh == refresh_token.reveal():
                if grant.refresh_used or grant.revoked:
                    break
                grant.refresh_used = True
                return self._grant(grant.user)
        raise InvalidGrant(400, {"error": "invalid_grant"})

    async def revoke(self, token: Secret) -> None:
        self._enter("revoke")
        for grant in self.grants:
            if token.reveal() in (grant.access, grant.refresh):
                grant.revoked = True

    async def current_user(self, access_token: Secret) -> CalendlyAccount:
        self._enter("current_user")
        user = self._bearer(access_token)
        return CalendlyAccount(
            user_uri=user.uri,
            organization_uri=user.organization_uri,
            email=user.email,
            name=user.name,
        )

    async def list_subscriptions(
        self, access_token: Secret, *, organization_uri: str, user_uri: str
    ) -> list[Subscription]:
        self._enter("list_subscriptions")
        self._bearer(access_token)
        return [
            Subscription(
                uri=s.uri,
                callback_url=s.callback_url,
                events=s.events,
                state=s.state,
                scope="user",
                user_uri=s.user.uri,
            )
            for s in self.subscriptions.values()
            if s.user.uri == user_uri
        ]

    async def create_subscription(
        self, access_token: Secret, subscription: NewSubscription
    ) -> Subscription:
        self._enter("create_subscription")
        user = self._bearer(access_token)
        if not user.paid:
            raise PlanRequired(403, {"message": "Please upgrade your Calendly account to Standard"})
        if any(
            s.callback_url == subscription.callback_url and s.user is user
            for s in self.subscriptions.values()
        ):
            raise AlreadyExists(409, {"message": "Hook with this url already exists"})
        uri = f"{BASE}/webhook_subscriptions/s{next(self._ids)}"
        self.mutations += 1
        self.subscriptions[uri] = FakeSubscription(
            uri=uri,
            callback_url=subscription.callback_url,
            events=subscription.events,
            user=user,
            signing_key=subscription.signing_key.reveal(),
        )
        return Subscription(
            uri=uri,
            callback_url=subscription.callback_url,
            events=subscription.events,
            state="active",
            scope="user",
            user_uri=user.uri,
        )

    async def delete_subscription(self, access_token: Secret, uri: str) -> None:
        self._enter("delete_subscription")
        self._bearer(access_token)
        if self.subscriptions.pop(uri, None) is None:
            raise ResourceNotFound(404, {"title": "Resource Not Found"})
        self.mutations += 1
