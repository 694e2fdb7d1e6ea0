"""The sandbox's settings: registered OAuth clients, token lifetimes, limits and delivery timing."""

from __future__ import annotations

from typing import Literal

import msgspec

HookUniqueness = Literal["user", "organization", "global"]
PayloadStyle = Literal["current", "legacy"]


class OAuthClient(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An OAuth application registered with the sandbox (what a developer registers at Calendly)."""

    client_id: str
    client_secret: str
    redirect_uris: list[str]
    # The app-level webhook signing key Calendly generates for an OAuth app. Subscriptions
    # created without their own `signing_key` are signed with it; None sends no signature.
    webhook_signing_key: str | None = None
    # Older token responses lack `organization`; a client can ask for that shape.
    legacy_token_response: bool = False


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Knobs to turn at start-up or at run time (`PATCH /_sandbox/settings`)."""

    access_token_ttl: int = 7200
    authorization_code_ttl: int = 600
    rate_limit_paid: int = 500
    rate_limit_free: int = 50
    rate_limit_window: int = 60
    token_requests_per_minute: int = 8
    # Whether a second subscription with the same callback URL collides per user, per
    # organization or everywhere (Calendly does not document which; the service must cope).
    hook_uniqueness: HookUniqueness = "user"
    payload_style: PayloadStyle = "current"
    # Webhook retries: first retry after `retry_base` virtual seconds, doubling, until
    # `retry_window` virtual seconds after the first failure; then the subscription is disabled.
    # Real time = virtual time * `delivery_time_scale` (1/720 turns Calendly's 24 h into 2 min).
    retry_base: float = 60.0
    retry_window: float = 86_400.0
    delivery_time_scale: float = 1 / 720
    delivery_connect_timeout: float = 10.0
    delivery_read_timeout: float = 15.0
    # Extra copies sent of every delivery, and whether deliveries wait for an explicit release.
    duplicate_deliveries: int = 0
    hold_deliveries: bool = False


class SandboxConfig(msgspec.Struct, kw_only=True):
    """Everything needed to build a sandbox app."""

    # Base of every URI in responses; None means the sandbox's own address once it listens.
    base_url: str | None = None
    clients: list[OAuthClient] = msgspec.field(default_factory=list)
    settings: Settings = msgspec.field(default_factory=Settings)
