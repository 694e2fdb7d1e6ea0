"""The sandbox's in-memory world: organizations, users, tokens, subscriptions, events, invitees."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Plan = Literal["free", "standard", "teams", "enterprise"]
Role = Literal["owner", "admin", "user"]
CancelerType = Literal["host", "invitee"]

USER_SCOPE_EVENTS = frozenset(
    {
        "invitee.created",
        "invitee.canceled",
        "invitee_no_show.created",
        "invitee_no_show.deleted",
        "event_type.created",
        "event_type.updated",
        "event_type.deleted",
        "meeting_recap.created",
        "contact.created",
        "contact.updated",
        "contact.deleted",
    }
)
ORGANIZATION_ONLY_EVENTS = frozenset({"routing_form_submission.created"})
USER_ONLY_EVENTS = frozenset({"meeting_recap.created"})
KNOWN_EVENTS = USER_SCOPE_EVENTS | ORGANIZATION_ONLY_EVENTS


def new_id() -> str:
    return str(uuid.uuid4())


def new_secret(prefix: str) -> str:
    # Real tokens are long opaque strings; ours are long too, so a column that caps width fails.
    return f"{prefix}_{secrets.token_urlsafe(96)}"


def iso(ts: float) -> str:
    """Calendly's timestamp shape: UTC, microseconds, `Z`."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> float:
    """Parse an ISO 8601 time as Calendly's clients send it; raises ValueError."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("time zone missing")
    return value.timestamp()


@dataclass
class Organization:
    id: str
    name: str
    created_at: float


@dataclass
class User:
    id: str
    name: str
    email: str
    slug: str
    timezone: str
    organization_id: str
    role: Role
    plan: Plan
    created_at: float
    updated_at: float
    # The shape of this user's deliveries when it is not the world's (`payload_style`):
    # "legacy" sends the pre-2022 shape (no `scheduled_event`, a boolean `canceled`).
    payload_style: Literal["current", "legacy"] | None = None

    @property
    def is_admin(self) -> bool:
        return self.role in ("owner", "admin")

    @property
    def paid(self) -> bool:
        return self.plan != "free"


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str
    user_id: str
    code_challenge: str | None
    expires_at: float
    used: bool = False


@dataclass
class TokenGrant:
    """One access/refresh pair as issued together."""

    access_token: str
    refresh_token: str
    client_id: str
    user_id: str
    created_at: float
    expires_at: float
    access_revoked: bool = False
    refresh_used: bool = False
    refresh_revoked: bool = False


@dataclass
class Subscription:
    id: str
    callback_url: str
    events: list[str]
    scope: Literal["user", "organization", "group"]
    organization_id: str
    user_id: str | None
    group: str | None
    creator_id: str
    client_id: str | None
    signing_key: str | None
    created_at: float
    updated_at: float
    state: Literal["active", "disabled"] = "active"
    retry_started_at: float | None = None


@dataclass
class Cancellation:
    canceled_by: str
    reason: str | None
    canceler_type: CancelerType
    created_at: float


@dataclass
class ScheduledEvent:
    id: str
    name: str
    host_id: str
    organization_id: str
    event_type_id: str
    start_time: float
    end_time: float
    location: dict[str, Any]
    invitee_limit: int
    created_at: float
    updated_at: float
    status: Literal["active", "canceled"] = "active"
    cancellation: Cancellation | None = None
    invitee_ids: list[str] = field(default_factory=list)


@dataclass
class NoShow:
    id: str
    created_at: float


@dataclass
class Invitee:
    id: str
    event_id: str
    email: str
    name: str
    timezone: str
    created_at: float
    updated_at: float
    questions_and_answers: list[dict[str, Any]] = field(default_factory=list)
    status: Literal["active", "canceled"] = "active"
    cancellation: Cancellation | None = None
    rescheduled: bool = False
    old_invitee_id: str | None = None
    new_invitee_id: str | None = None
    no_show: NoShow | None = None
