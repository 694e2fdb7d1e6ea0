"""Calendly's JSON as msgspec Structs: lenient on input (Calendly adds fields), exact on output."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec

from domain.secret import Secret

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
# Calendly says 7200; anything from nothing to ten years is taken as given.
Lifetime = Annotated[float, msgspec.Meta(ge=0, le=10 * 366 * 86_400)]
# Calendly's locations are two levels deep; anything far deeper is not a location but a
# payload built to exhaust a recursive reader or writer further on (RELIABILITY row 32).
MAX_LOCATION_DEPTH: Final = 16


def utc(value: datetime | None) -> datetime | None:
    """The time in UTC; a time without a zone is taken as UTC, never compared naive.

    Raises ValueError when UTC cannot hold it (before year 1 or after 9999 once converted, as
    `0001-01-01T00:00:00+05:00` is): Postgres would store such a time, but it could never be
    read back as itself. Raised inside a Struct's `__post_init__`, it makes msgspec's decode
    fail with a ValidationError, so a delivery carrying one is unusable (stored aside) and a
    listed item is skipped.
    """
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("a time is outside what a datetime holds in UTC") from None


def nests_at_most(value: object, depth: int) -> bool:
    """Whether dicts and lists nest no deeper than `depth` levels in `value` (no recursion)."""
    level = [value]
    for _ in range(depth):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return True
    return not any(isinstance(item, dict | list) for item in level)


# ------------------------------------------------------------------- OAuth
class TokenResponse(msgspec.Struct, kw_only=True):
    """`POST /oauth/token` answered 200 (older responses lack `organization`)."""

    access_token: NonEmpty
    refresh_token: NonEmpty
    expires_in: Lifetime
    owner: NonEmpty
    organization: str | None = None
    token_type: str | None = None
    scope: str | None = None
    created_at: float | None = None


class OAuthErrorBody(msgspec.Struct, kw_only=True):
    """An RFC 6749 error: branch on `error`, never on `error_description`."""

    error: str
    error_description: str | None = None


# --------------------------------------------------------------------- API
class ApiErrorBody(msgspec.Struct, kw_only=True):
    """The API's error envelope: `{"title", "message", "details"?}`."""

    title: str | None = None
    message: str | None = None


class User(msgspec.Struct, kw_only=True):
    uri: NonEmpty
    email: str
    current_organization: NonEmpty
    name: str | None = None


class UserResource(msgspec.Struct, kw_only=True):
    resource: User


class WebhookSubscription(msgspec.Struct, kw_only=True):
    uri: str
    callback_url: str
    state: str
    scope: str
    events: list[str] = msgspec.field(default_factory=list)
    user: str | None = None
    organization: str | None = None
    # Kept as text and parsed leniently: a timestamp in an odd shape must not fail a listing.
    created_at: str | None = None

    def created(self) -> datetime | None:
        if not self.created_at:
            return None
        try:
            return utc(datetime.fromisoformat(self.created_at))
        except ValueError:
            return None


class WebhookSubscriptionResource(msgspec.Struct, kw_only=True):
    resource: WebhookSubscription


class Pagination(msgspec.Struct, kw_only=True):
    next_page_token: str | None = None


class RawPage(msgspec.Struct, kw_only=True):
    """One page of a collection, its items left undecoded so that each is read on its own."""

    collection: list[msgspec.Raw]
    pagination: Pagination = msgspec.field(default_factory=Pagination)


# ---------------------------------------------- scheduled events & invitees
# Shared by the webhook decoder (an Invitee with its event embedded) and the REST listings.
# Every time these carry is turned into UTC as it is decoded, or the decode fails (see `utc`).
class Cancellation(msgspec.Struct, kw_only=True):
    canceled_by: str | None = None
    reason: str | None = None
    canceler_type: str | None = None
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        self.created_at = utc(self.created_at)


class Membership(msgspec.Struct, kw_only=True):
    user: str | None = None


class ScheduledEvent(msgspec.Struct, kw_only=True):
    # Required: without it the event is no one's (a delivery is unusable, a listing skips it).
    uri: str
    name: str | None = None
    status: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    # Polymorphic by `type`, with types added over time: kept as data, never interpreted.
    location: dict[str, Any] | None = None
    event_memberships: list[Membership] | None = None
    cancellation: Cancellation | None = None

    def __post_init__(self) -> None:
        self.start_time = utc(self.start_time)
        self.end_time = utc(self.end_time)
        if self.location is not None and not nests_at_most(self.location, MAX_LOCATION_DEPTH):
            raise ValueError(f"the location nests deeper than {MAX_LOCATION_DEPTH} levels")


class ScheduledEventResource(msgspec.Struct, kw_only=True):
    resource: ScheduledEvent


class NoShow(msgspec.Struct, kw_only=True):
    uri: str | None = None
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        self.created_at = utc(self.created_at)


class Invitee(msgspec.Struct, kw_only=True):
    uri: str | None = None
    event: str | None = None
    email: str | None = None
    name: str | None = None
    status: str | None = None
    timezone: str | None = None
    rescheduled: bool | None = None
    old_invitee: str | None = None
    new_invitee: str | None = None
    cancellation: Cancellation | None = None
    no_show: NoShow | None = None
    # Pre-2022 payloads: a boolean instead of `status`, and no embedded event.
    canceled: bool | None = None
    scheduled_event: ScheduledEvent | None = None


# ------------------------------------------------------------ request bodies
class CreateWebhookSubscription(msgspec.Struct, kw_only=True):
    """The body of `POST /webhook_subscriptions` (user scope).

    The signing key stays a `Secret` until the moment the body is encoded (see `encode`).
    """

    url: str
    events: list[str]
    organization: str
    scope: str
    user: str
    signing_key: Secret


def _reveal(value: object) -> object:
    if isinstance(value, Secret):
        return value.reveal()
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def encode(body: msgspec.Struct) -> bytes:
    """JSON for a request body, revealing `Secret` fields only in the bytes it returns."""
    return msgspec.json.encode(body, enc_hook=_reveal)
