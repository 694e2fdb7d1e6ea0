"""The HTTP wire format: request and response Structs, and how use-case results map to them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from domain.meetings import Cancellation, Invitee, MeetingStatus
from domain.model import ConnectionStatus, WebhookStatus
from domain.ports import ErasedData, MeetingDetails, MeetingView
from domain.usecases.disconnect import DisconnectResult
from domain.usecases.erase_user import EraseUserResult
from domain.usecases.views import ConnectionView

# A dev-login user id: short, and harmless in URLs, logs and SQL settings.
DevUserId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]


# ------------------------------------------------------------------ problems
class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    """One rejected input: which parameter, where it came from, what is wrong."""

    parameter: str | None
    source: str | None
    message: str


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details, with the request id to quote when reporting it."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str | None = None
    errors: tuple[FieldError, ...] | None = None


class FailingCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One readiness check that failed: `database`, `migrations` or `live_listener`."""

    check: str
    detail: str


class NotReadyProblem(Problem, frozen=True, kw_only=True, omit_defaults=True):
    """Readiness's 503: the problem, and every check that failed."""

    failing: tuple[FailingCheck, ...] = ()


# -------------------------------------------------------------------- basics
class HealthResponse(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ok"]


class DevLoginRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    user_id: DevUserId


class TokenResponse(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    expires_at: datetime
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a token type, not a password


# ---------------------------------------------------------------- connection
class MaintenanceResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The background worker keeps failing on this connection and backs off."""

    failures: int
    last_error: str | None
    retry_at: datetime | None


class ConnectionResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A connection's state as the user may see it: no token, code or signing key."""

    status: ConnectionStatus
    webhook_status: WebhookStatus
    calendly_user_uri: str | None
    organization_uri: str | None
    email: str | None
    name: str | None
    token_expires_at: datetime | None
    last_error: str | None
    connected_since: datetime
    updated_at: datetime
    # Null unless the worker's last pass on this connection failed.
    maintenance: MaintenanceResponse | None = None
    # When the worker last synced this connection with Calendly (null: not yet). A free-plan
    # connection (no webhooks) is only as fresh as this.
    synced_at: datetime | None = None

    @classmethod
    def of(cls, view: ConnectionView) -> ConnectionResponse:
        trouble = view.maintenance
        return cls(
            status=view.status,
            webhook_status=view.webhook_status,
            calendly_user_uri=view.calendly_user_uri,
            organization_uri=view.organization_uri,
            email=view.email,
            name=view.name,
            token_expires_at=view.token_expires_at,
            last_error=view.last_error,
            connected_since=view.connected_since,
            updated_at=view.updated_at,
            maintenance=None
            if trouble is None
            else MaintenanceResponse(
                failures=trouble.failures,
                last_error=trouble.last_error,
                retry_at=trouble.retry_at,
            ),
            synced_at=view.synced_at,
        )


# RFC 7636's S256 challenge and verifier formats, for the connect hand-off (DR-28).
CompletionChallenge = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9_-]{43}$",
        description="base64url(SHA-256(verifier)) without padding, as PKCE's S256",
    ),
]
CompletionVerifier = Annotated[
    str, Meta(pattern=r"^[A-Za-z0-9._~-]{43,128}$", description="The verifier kept by the page")
]
OAuthState = Annotated[str, Meta(min_length=1, max_length=256)]
OAuthCode = Annotated[str, Meta(min_length=1, max_length=2048)]


class ConnectRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Optional body of connect and reconnect (unknown fields are ignored: newer clients may
    send more than this service knows).

    With `completion_challenge`, the page that keeps its verifier can complete the round trip
    itself (`POST /api/calendly/connect/complete`) when the popup hands it Calendly's code:
    the way a page on another origin connects, where no cookie can bind the round trip.
    """

    completion_challenge: CompletionChallenge | None = None


class CompleteConnectRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the popup handed the page (`state`, `code`) and the page's own verifier."""

    state: OAuthState
    code: OAuthCode
    completion_verifier: CompletionVerifier


class ConnectStarted(msgspec.Struct, frozen=True, kw_only=True):
    authorization_url: str
    state: str
    expires_at: datetime


class ConnectCompleted(msgspec.Struct, frozen=True, kw_only=True):
    connection: ConnectionResponse
    switched_account: bool


class PopupMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the OAuth popup posts to the app window that opened it.

    `ok` with `connection`: connected. `ok` with `stage: "authorized"` and `code`: the page
    that started the round trip completes it (a hand-off). Otherwise `error`. `state` names
    the round trip, so a page ignores answers to any round trip it did not start.
    """

    type: Literal["calendly-connect"]
    ok: bool
    state: str | None = None
    connection: ConnectionResponse | None = None
    stage: Literal["authorized"] | None = None
    code: str | None = None
    error: Problem | None = None


class PopupSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the popup script needs besides the outcome: where it may post it."""

    target_origins: tuple[str, ...]


class ReconnectResponse(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """`reconnected` with the connection, or `authorization_required` with the URL to open."""

    outcome: Literal["reconnected", "authorization_required"]
    connection: ConnectionResponse | None = None
    authorization_url: str | None = None
    state: str | None = None
    expires_at: datetime | None = None


class DisconnectResponse(msgspec.Struct, frozen=True, kw_only=True):
    connection: ConnectionResponse | None
    subscription_deleted: bool
    revoke_failed: bool
    already_disconnected: bool

    @classmethod
    def of(cls, result: DisconnectResult) -> DisconnectResponse:
        return cls(
            connection=ConnectionResponse.of(result.connection) if result.connection else None,
            subscription_deleted=result.subscription_deleted,
            revoke_failed=result.revoke_failed,
            already_disconnected=result.already_disconnected,
        )


# ------------------------------------------------------------------ meetings
class CancellationResponse(msgspec.Struct, frozen=True, kw_only=True):
    canceled_by: str | None
    reason: str | None
    canceler_type: str | None
    canceled_at: datetime | None

    @classmethod
    def of(cls, cancellation: Cancellation | None) -> CancellationResponse | None:
        if cancellation is None:
            return None
        return cls(
            canceled_by=cancellation.canceled_by,
            reason=cancellation.reason,
            canceler_type=cancellation.canceler_type,
            canceled_at=cancellation.canceled_at,
        )


class InviteeResponse(msgspec.Struct, frozen=True, kw_only=True):
    invitee_uri: str
    email: str | None
    name: str | None
    status: MeetingStatus
    rescheduled: bool
    old_invitee_uri: str | None
    new_invitee_uri: str | None
    no_show: bool
    cancellation: CancellationResponse | None

    @classmethod
    def of(cls, invitee: Invitee) -> InviteeResponse:
        return cls(
            invitee_uri=invitee.invitee_uri,
            email=invitee.email,
            name=invitee.name,
            status=invitee.status,
            rescheduled=invitee.rescheduled,
            old_invitee_uri=invitee.old_invitee_uri,
            new_invitee_uri=invitee.new_invitee_uri,
            no_show=invitee.no_show,
            cancellation=CancellationResponse.of(invitee.cancellation),
        )


class MeetingResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    event_uri: str
    name: str | None
    start_time: datetime | None
    end_time: datetime | None
    status: MeetingStatus
    # Calendly's location object as it came (type, join_url, ...).
    location: dict[str, Any] | None
    cancellation: CancellationResponse | None
    invitees: tuple[InviteeResponse, ...]
    # "pending" while the service reads the event from Calendly (a delivery lacked its name,
    # times, location or status: they are filled in within seconds); "unavailable" when
    # Calendly would not show the event (`details_error` says what it answered).
    details: MeetingDetails = "complete"
    details_error: str | None = None

    @classmethod
    def of(cls, view: MeetingView) -> MeetingResponse:
        meeting = view.meeting
        return cls(
            id=view.id,
            event_uri=meeting.event_uri,
            name=meeting.name,
            start_time=meeting.start_time,
            end_time=meeting.end_time,
            status=meeting.status,
            location=meeting.location,
            cancellation=CancellationResponse.of(meeting.cancellation),
            invitees=tuple(InviteeResponse.of(i) for i in view.invitees),
            details=view.details,
            details_error=view.details_error,
        )


class MeetingsResponse(msgspec.Struct, frozen=True, kw_only=True):
    meetings: tuple[MeetingResponse, ...]
    # Pass as `cursor` for the next page; null on the last page.
    next_cursor: str | None


# ---------------------------------------------------- the host's server API (/v1)
class UserConnectionResponse(ConnectionResponse, frozen=True, kw_only=True):
    """A connection as the host's back end sees it: the user's view, and whose it is."""

    user_id: str

    @classmethod
    def of_user(cls, user_id: str, view: ConnectionView) -> UserConnectionResponse:
        return cls(user_id=user_id, **msgspec.structs.asdict(ConnectionResponse.of(view)))


class ConnectionsResponse(msgspec.Struct, frozen=True, kw_only=True):
    connections: tuple[UserConnectionResponse, ...]
    # Pass as `cursor` for the next page; null on the last page.
    next_cursor: str | None


SessionSeconds = Annotated[
    int, Meta(ge=60, le=3600, description="How long the session lasts, in seconds")
]


class SessionRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ttl_seconds: SessionSeconds = 900


class SessionResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A user session: send it as `Authorization: Bearer` to `/api/...` and the live stream."""

    user_id: str
    access_token: str
    expires_at: datetime
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a token type, not a password


class RemovedResponse(msgspec.Struct, frozen=True, kw_only=True):
    """How many rows of the user each kind of data lost."""

    connections: int
    meetings: int
    invitees: int
    webhook_deliveries: int
    oauth_states: int
    host_notifications: int
    maintenance: int
    changes: int

    @classmethod
    def of(cls, erased: ErasedData) -> RemovedResponse:
        return cls(**msgspec.structs.asdict(erased))


class ErasureResponse(msgspec.Struct, frozen=True, kw_only=True):
    """What an erasure did: at Calendly first (the disconnect), then here (`removed`).

    An unknown user, or one erased before, answers `already_disconnected` and zero counts.
    """

    user_id: str
    subscription_deleted: bool
    revoke_failed: bool
    already_disconnected: bool
    removed: RemovedResponse

    @classmethod
    def of(cls, user_id: str, result: EraseUserResult) -> ErasureResponse:
        return cls(
            user_id=user_id,
            subscription_deleted=result.disconnect.subscription_deleted,
            revoke_failed=result.disconnect.revoke_failed,
            already_disconnected=result.disconnect.already_disconnected,
            removed=RemovedResponse.of(result.erased),
        )


# ------------------------------------------------------------------ webhooks
class WebhookAck(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Literal["applied", "ignored", "duplicate", "stored_aside"]


# ------------------------------------------------------------- the change feed
class ChangeResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One change: what happened to whose connection or meeting, and the subject as it is now
    (null when it has been erased since). Upsert the subject by its id."""

    cursor: str
    user_id: str
    # 1, 2, 3, ... for each user, in the order that user's changes committed.
    user_seq: int
    kind: Literal["connection", "meeting"]
    event: str
    subject_id: str
    created_at: datetime
    connection: UserConnectionResponse | None = None
    meeting: MeetingResponse | None = None


class ChangesResponse(msgspec.Struct, frozen=True, kw_only=True):
    changes: tuple[ChangeResponse, ...]
    # Read on with `after=<next_cursor>`: it is always set (the one you sent, or where the
    # feed starts, when nothing is new); keep it to resume after a restart.
    next_cursor: str
