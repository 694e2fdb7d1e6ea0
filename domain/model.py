"""The domain model: connections to Calendly, pending authorizations, meetings and invitees."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final, TypeGuard

import msgspec
from msgspec.structs import replace

from .secret import Secret

# An app user's id, as the host's sign-in names it (a JWT claim) and the server API addresses
# it: 1 to 255 characters, none of them a control or other unprintable character. The one rule,
# applied wherever an id comes in (bearer tokens, `/v1/users/{user_id}`, user sessions).
MAX_USER_ID_LENGTH: Final = 255


def is_user_id(value: object) -> TypeGuard[str]:
    """Whether `value` is an app user's id the service accepts."""
    return isinstance(value, str) and 1 <= len(value) <= MAX_USER_ID_LENGTH and value.isprintable()


class ConnectionStatus(StrEnum):
    ACTIVE = "active"
    NEEDS_REAUTH = "needs_reauth"
    DISCONNECTED = "disconnected"


class WebhookStatus(StrEnum):
    ACTIVE = "active"
    UNAVAILABLE_PLAN = "unavailable_plan"
    DISABLED = "disabled"
    MISSING = "missing"


class TokenSet(msgspec.Struct, frozen=True, kw_only=True):
    """An access/refresh pair as Calendly issued it (the refresh token is single-use)."""

    access_token: Secret
    refresh_token: Secret
    expires_at: datetime

    def expires_within(self, now: datetime, margin: timedelta) -> bool:
        return self.expires_at - margin <= now


class CalendlyAccount(msgspec.Struct, frozen=True, kw_only=True):
    """Who the connection is at Calendly: the user URI routes webhooks to it."""

    user_uri: str
    organization_uri: str
    email: str
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.user_uri or not self.organization_uri:
            raise ValueError("a Calendly account needs its user and organization URIs")


class Connection(msgspec.Struct, frozen=True, kw_only=True):
    """One app user's link to one Calendly account.

    Invariants: an active connection has tokens; a disconnected one has none and no signing key.
    `account` is None only for rows inherited from older systems (repair fills it in).
    """

    id: str
    user_id: str
    status: ConnectionStatus
    account: CalendlyAccount | None
    tokens: TokenSet | None
    webhook_status: WebhookStatus = WebhookStatus.MISSING
    subscription_uri: str | None = None
    signing_key: Secret | None = None
    # The path segment of this connection's own callback URL (`/webhooks/calendly/<token>`).
    webhook_token: str
    version: int = 0
    last_error: str | None = None
    created_at: datetime
    updated_at: datetime
    # When the user last connected afresh: the first connect, or one after a disconnect or with
    # another Calendly account (None for rows from before this was kept: `created_at` then).
    connected_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.status is ConnectionStatus.ACTIVE and self.tokens is None:
            raise ValueError("an active connection needs tokens")
        if self.status is ConnectionStatus.DISCONNECTED and (
            self.tokens is not None or self.signing_key is not None
        ):
            raise ValueError("a disconnected connection keeps no secrets")

    @property
    def is_connected(self) -> bool:
        return self.status is not ConnectionStatus.DISCONNECTED

    def needs_refresh(self, now: datetime, margin: timedelta) -> bool:
        return self.tokens is not None and self.tokens.expires_within(now, margin)

    def with_tokens(self, tokens: TokenSet, now: datetime) -> Connection:
        return replace(
            self, tokens=tokens, status=ConnectionStatus.ACTIVE, last_error=None, updated_at=now
        )

    def with_account(self, account: CalendlyAccount, now: datetime) -> Connection:
        return replace(self, account=account, updated_at=now)

    def connected_since(self, at: datetime | None) -> Connection:
        return replace(self, connected_at=at)

    def needing_reauth(self, reason: str, now: datetime) -> Connection:
        return replace(
            self, status=ConnectionStatus.NEEDS_REAUTH, last_error=reason, updated_at=now
        )

    def with_subscription(self, uri: str, signing_key: Secret | None, now: datetime) -> Connection:
        return replace(
            self,
            subscription_uri=uri,
            signing_key=signing_key,
            webhook_status=WebhookStatus.ACTIVE,
            updated_at=now,
        )

    def without_subscription(self, status: WebhookStatus, now: datetime) -> Connection:
        return replace(
            self, subscription_uri=None, signing_key=None, webhook_status=status, updated_at=now
        )

    def with_webhook_token(self, token: str, now: datetime) -> Connection:
        """A new callback URL, so subscriptions at the old one can be told apart and retired."""
        return replace(self, webhook_token=token, updated_at=now)

    def disconnected(self, now: datetime) -> Connection:
        return replace(
            self,
            status=ConnectionStatus.DISCONNECTED,
            tokens=None,
            signing_key=None,
            subscription_uri=None,
            webhook_status=WebhookStatus.MISSING,
            last_error=None,
            updated_at=now,
        )


class PendingAuthorization(msgspec.Struct, frozen=True, kw_only=True):
    """An OAuth round trip in flight: single use, bound to one app user and one browser."""

    state: str
    user_id: str
    code_verifier: Secret
    # SHA-256 of the browser-binding cookie set when the round trip started (None for API use).
    browser_binding: str | None
    # base64url(SHA-256(verifier)) from the page that started it: with that verifier and the
    # user's token, the page may complete the round trip itself (a hand-off, DR-28).
    completion_challenge: str | None = None
    created_at: datetime
    expires_at: datetime

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at
