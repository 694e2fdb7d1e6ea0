"""Start connecting Calendly: a single-use `state` and a PKCE challenge, bound to the user."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import datetime, timedelta
from typing import Final

import msgspec

from domain.model import PendingAuthorization
from domain.ports import CalendlyApi, Clock, Randomness, UnitOfWorkFactory
from domain.secret import Secret

STATE_TTL = timedelta(minutes=10)
# RFC 7636's S256 challenge: 43 base64url characters (a SHA-256 digest, no padding).
CHALLENGE: Final = re.compile(r"[A-Za-z0-9_-]{43}")
# RFC 7636's verifier: 43 to 128 unreserved characters.
VERIFIER: Final = re.compile(r"[A-Za-z0-9._~-]{43,128}")


def s256(value: str) -> str:
    """RFC 7636 S256: base64url(SHA-256(value)) without padding."""
    digest = hashlib.sha256(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def pkce_challenge(verifier: Secret) -> str:
    return s256(verifier.reveal())


def verifier_matches(verifier: str, challenge: str) -> bool:
    """Whether `verifier` is the one whose S256 challenge is `challenge` (constant time)."""
    if not VERIFIER.fullmatch(verifier):
        return False
    return hmac.compare_digest(s256(verifier), challenge)


def binding_digest(browser_binding: str) -> str:
    """What is stored of the browser-binding cookie: its hash, never the value."""
    return hashlib.sha256(browser_binding.encode("utf-8")).hexdigest()


class StartConnectCommand(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    # A random value the HTTP layer also sets as an HttpOnly cookie, so only the browser that
    # started the round trip can finish it (RFC 9700, CSRF protection of the callback).
    browser_binding: str | None = None
    # S256 challenge of a verifier the starting page keeps (RFC 7636's format): lets that page
    # complete the round trip when no cookie can bind it to the browser (another origin).
    completion_challenge: str | None = None

    def __post_init__(self) -> None:
        if self.completion_challenge is not None and not CHALLENGE.fullmatch(
            self.completion_challenge
        ):
            raise ValueError("completion_challenge must be 43 base64url characters (S256)")


class StartConnectResult(msgspec.Struct, frozen=True, kw_only=True):
    authorization_url: str
    state: str
    expires_at: datetime


class StartConnect:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        calendly: CalendlyApi,
        clock: Clock,
        random: Randomness,
        redirect_uri: str,
        state_ttl: timedelta = STATE_TTL,
    ) -> None:
        self._uow = uow
        self._calendly = calendly
        self._clock = clock
        self._random = random
        self._redirect_uri = redirect_uri
        self._state_ttl = state_ttl

    async def __call__(self, command: StartConnectCommand) -> StartConnectResult:
        now = self._clock.now()
        verifier = Secret(self._random.token(48))
        pending = PendingAuthorization(
            state=self._random.token(32),
            user_id=command.user_id,
            code_verifier=verifier,
            browser_binding=(
                binding_digest(command.browser_binding) if command.browser_binding else None
            ),
            completion_challenge=command.completion_challenge,
            created_at=now,
            expires_at=now + self._state_ttl,
        )
        async with self._uow(command.user_id) as uow:
            await uow.authorizations.add(pending)
            await uow.commit()
        url = self._calendly.authorization_url(
            state=pending.state,
            code_challenge=pkce_challenge(verifier),
            redirect_uri=self._redirect_uri,
        )
        return StartConnectResult(
            authorization_url=url, state=pending.state, expires_at=pending.expires_at
        )
