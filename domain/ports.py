"""The ports: what the core needs from the outside world, named for the role they play."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Literal, Protocol, Self

import msgspec

from .api_keys import ApiKey
from .meetings import Invitee, Meeting, MeetingStatus
from .model import (
    CalendlyAccount,
    Connection,
    ConnectionStatus,
    PendingAuthorization,
    TokenSet,
    WebhookStatus,
)
from .secret import Secret


# ----------------------------------------------------------------- Calendly
class GrantedTokens(msgspec.Struct, frozen=True, kw_only=True):
    """What the token endpoint answered: the pair and whose it is."""

    tokens: TokenSet
    owner_uri: str
    # Older token responses lack it; then `/users/me` says it.
    organization_uri: str | None = None


class Subscription(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook subscription as Calendly reports it (its signing key is never echoed)."""

    uri: str
    callback_url: str
    events: tuple[str, ...]
    state: Literal["active", "disabled"] | str
    scope: str
    user_uri: str | None
    created_at: datetime | None = None

    @property
    def is_active(self) -> bool:
        return self.state == "active"


class NewSubscription(msgspec.Struct, frozen=True, kw_only=True):
    callback_url: str
    events: tuple[str, ...]
    organization_uri: str
    user_uri: str
    signing_key: Secret


class CalendlyApi(Protocol):
    """Calendly's OAuth server and REST API.

    Every method raises a `CalendlyError` subclass for an error answer: `InvalidGrant`,
    `TokenRejected` (401), `PlanRequired`, `PermissionDenied`, `ResourceNotFound`,
    `AlreadyExists`, `RateLimited`, or `CalendlyUnavailable` (unreachable, timeout, 5xx).
    """

    def announced_limit(self, access_token: Secret) -> int | None:
        """The requests a minute Calendly said this token may make (`X-RateLimit-Limit`) in
        its latest answer, while that answer's rate window lasts; None when none is known.
        Calendly allows 500 on paid plans and 50 on Free: a plan change shows here, on the
        calls made anyway (DR-45)."""
        ...

    def authorization_url(self, *, state: str, code_challenge: str, redirect_uri: str) -> str:
        """The consent page URL to open in the popup (no I/O)."""
        ...

    async def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: Secret
    ) -> GrantedTokens:
        """Redeem an authorization code. Never retried: codes are single-use."""
        ...

    async def refresh(self, refresh_token: Secret) -> GrantedTokens:
        """Trade a refresh token for a new pair. Never retried: refresh tokens are single-use."""
        ...

    async def revoke(self, token: Secret) -> None:
        """Revoke a token (and its pair)."""
        ...

    async def current_user(self, access_token: Secret) -> CalendlyAccount:
        """`GET /users/me` as an account."""
        ...

    async def list_subscriptions(
        self, access_token: Secret, *, organization_uri: str, user_uri: str
    ) -> list[Subscription]:
        """Every user-scope subscription of the user, all pages followed."""
        ...

    async def create_subscription(
        self, access_token: Secret, subscription: NewSubscription
    ) -> Subscription:
        """Create a user-scope subscription."""
        ...

    async def delete_subscription(self, access_token: Secret, uri: str) -> None:
        """Delete a subscription; raises ResourceNotFound when it is already gone."""
        ...

    async def get_subscription(self, access_token: Secret, uri: str) -> Subscription:
        """One subscription as Calendly has it now (`state` says whether it was disabled).

        Raises ResourceNotFound when it is gone (deleted here or in Calendly).
        """
        ...

    async def list_scheduled_events(
        self,
        access_token: Secret,
        *,
        user_uri: str,
        min_start_time: datetime,
        max_start_time: datetime | None = None,
    ) -> list[Meeting]:
        """Every scheduled event of the user starting in [min_start_time, max_start_time).

        Active and canceled alike, earliest start first, all pages followed. Calendly filters
        on the start time, not on when an event changed: look back far enough to see late
        cancellations. An event Calendly describes without a URI is left out (and logged),
        never the reason a whole listing fails.
        """
        ...

    async def get_scheduled_event(self, access_token: Secret, event_uri: str) -> Meeting:
        """One scheduled event as Calendly has it now (its status, cancellation and details).

        Raises ResourceNotFound when Calendly does not know it, PermissionDenied when it is not
        the token's user's to see.
        """
        ...

    async def list_invitees(self, access_token: Secret, event_uri: str) -> list[Invitee]:
        """Every invitee of one scheduled event, whatever its status, all pages followed.

        Each carries its cancellation, its reschedule links and its no-show state
        (`no_show_changed_at` is when the mark was made). Raises ResourceNotFound when Calendly
        does not know the event; an invitee without a URI is left out (and logged).
        """
        ...


# ------------------------------------------------------------------ storage
class MaintenanceTrouble(msgspec.Struct, frozen=True, kw_only=True):
    """The worker keeps failing on a connection: how often, why, and when it tries again."""

    failures: int
    last_error: str | None
    retry_at: datetime | None


class MaintenanceState(msgspec.Struct, frozen=True, kw_only=True):
    """The worker's view of a connection, as its owner may see it."""

    # When its last sync with Calendly started (None: never synced yet).
    synced_at: datetime | None = None
    # Set when its last pass failed.
    trouble: MaintenanceTrouble | None = None


class ConnectionRepository(Protocol):
    """The current tenant's Calendly connection (one per app user)."""

    async def get(self, user_id: str, *, for_update: bool = False) -> Connection | None:
        """The user's connection; `for_update` locks it until the transaction ends."""
        ...

    async def add(self, connection: Connection) -> Connection:
        """Store a new connection; raises AccountAlreadyConnected if the account is taken."""
        ...

    async def save(self, connection: Connection) -> Connection:
        """Store a changed connection if nobody changed it since it was read.

        Returns it with the next version; raises ConcurrentUpdate when the version moved and
        AccountAlreadyConnected when its Calendly account belongs to another user.
        """
        ...

    async def maintenance(self, user_id: str) -> MaintenanceState | None:
        """What the worker knows of this connection: when it last synced it, and its failures
        if its last pass failed (None: the worker has no row for it)."""
        ...


class AuthorizationRepository(Protocol):
    """OAuth round trips in flight."""

    async def add(self, pending: PendingAuthorization) -> None: ...

    async def peek(self, state: str) -> PendingAuthorization | None:
        """The pending authorization for `state`, left in place."""
        ...

    async def take(self, state: str) -> PendingAuthorization | None:
        """Remove and return the pending authorization for `state` (each state works once)."""
        ...


class ConnectionRef(Protocol):
    """What a connection's rows are stored under: its id and its app user (a Connection is
    one, and so is the Route a delivery was found by)."""

    @property
    def id(self) -> str: ...

    @property
    def user_id(self) -> str: ...


class MeetingChange(msgspec.Struct, frozen=True, kw_only=True):
    """What one delivery says about a meeting and one of its invitees."""

    meeting: Meeting
    invitee: Invitee | None = None
    # For no-show events: the flag and Calendly's time of the change.
    no_show: bool | None = None
    no_show_at: datetime | None = None
    # The delivery lacks the event's details (its name, times, location, status): a worker is
    # to read the event from Calendly (DR-47). `meeting` then holds only the event's URI, and
    # its default status says nothing (canceled is terminal, so it cannot undo a cancel).
    needs_details: bool = False
    # This change is the event as read from Calendly for the request made at this time: the
    # request is met, unless a later delivery asked again meanwhile. With `details_error`, the
    # read failed for good (Calendly does not show the event) and `meeting` holds only its URI.
    details_for: datetime | None = None
    details_error: str | None = None


# Whether a meeting's details are known: "pending" while a worker is to read them from Calendly,
# "unavailable" when Calendly would not show the event (the reason is in `details_error`).
MeetingDetails = Literal["complete", "pending", "unavailable"]


class DetailsWanted(msgspec.Struct, frozen=True, kw_only=True):
    """A meeting whose event is to be read from Calendly, and when that was last asked."""

    event_uri: str
    requested_at: datetime


class MeetingView(msgspec.Struct, frozen=True, kw_only=True):
    """A meeting as the user's meetings list shows it, with its invitees."""

    id: str
    meeting: Meeting
    invitees: tuple[Invitee, ...]
    updated_at: datetime
    change_seq: int
    details: MeetingDetails = "complete"
    details_error: str | None = None


class MeetingQuery(msgspec.Struct, frozen=True, kw_only=True):
    status: MeetingStatus | None = None
    starts_after: datetime | None = None
    starts_before: datetime | None = None
    # Keyset cursor: the (start_time, id) of the last meeting on the previous page.
    after: tuple[datetime | None, str] | None = None
    limit: int = 50


class MeetingRepository(Protocol):
    """The current tenant's meetings."""

    async def apply(self, connection: ConnectionRef, change: MeetingChange) -> None:
        """Merge `change` into the stored meeting and invitee, by the rules of the model."""
        ...

    async def list(self, user_id: str, query: MeetingQuery) -> Sequence[MeetingView]: ...

    async def wanting_details(self, connection_id: str, limit: int) -> Sequence[DetailsWanted]:
        """Up to `limit` of the connection's meetings whose details are to be read now (not
        waiting out a failed read's back-off), the longest waiting first."""
        ...

    async def next_details_due(self, connection_id: str) -> datetime | None:
        """When a read of the connection's wanted details is next due (None: none wanted)."""
        ...

    async def postpone_details(
        self,
        connection_id: str,
        request: DetailsWanted,
        error: str,
        *,
        base: timedelta,
        cap: timedelta,
    ) -> None:
        """A read for `request` failed: show `error` on the meeting and try again after
        `base` doubling with each failure in a row, up to `cap` (unless a delivery renewed
        the request meanwhile: then it is due at once)."""
        ...

    async def changed_since(self, user_id: str, after: int, limit: int) -> Sequence[MeetingView]:
        """Meetings whose `change_seq` is above `after`, in the order they changed.

        A user's changes commit in `change_seq` order, so `after` works as a resume cursor.
        """
        ...

    async def latest_change(self, user_id: str) -> int:
        """The last `change_seq` given to the user's meetings (0 when none was): every change
        still to come is numbered above it, even once the meetings it numbered are gone."""
        ...


WebhookOutcome = Literal["applied", "ignored", "unusable"]


class WebhookEventLog(Protocol):
    """Deliveries seen, for deduplication and for looking back."""

    async def record(
        self,
        *,
        event_id: str,
        event_type: str,
        payload: bytes,
        connection: ConnectionRef | None,
        outcome: WebhookOutcome,
        reason: str | None = None,
        change: MeetingChange | None = None,
    ) -> bool:
        """Record a delivery; False when `event_id` was already recorded (a duplicate).

        With `change`, a new delivery's change is merged into the connection's meeting in the
        same step (as `MeetingRepository.apply` would); a duplicate's is not.
        """
        ...


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """Which app user and connected connection a delivery belongs to (a connection has a
    route exactly while it is not disconnected)."""

    user_id: str
    connection_id: str
    calendly_user_uri: str
    # The connection's own webhook signing key, when it has a subscription of ours.
    signing_key: Secret | None = None
    # Which version of the route this is, as the store read it (opaque; None: not known). A
    # ledger writing a delivery under this route writes nothing if the route has changed
    # since (raises RouteChanged), so a route kept from an earlier lookup is never trusted.
    version: str | None = None
    # Read before the call that answered it (kept by the ledger, DR-60): it may be out of date.
    kept: bool = False

    @property
    def id(self) -> str:
        """The connection's id: a route names its connection's rows (a ConnectionRef)."""
        return self.connection_id


class WebhookRouteRepository(Protocol):
    """The webhook routes: one per connection, readable by every tenant (and by none)."""

    async def find(
        self, *, webhook_token: str | None = None, calendly_user_uris: Sequence[str] = ()
    ) -> Route | None:
        """Find the connection a delivery belongs to, before any tenant is known.

        By `webhook_token` (a connection's own callback URL), else by the first of
        `calendly_user_uris` that a connected user holds, in their order. One indexed lookup
        either way, however many URIs are given (callers cap them).
        """
        ...

    async def users_without_account(self, limit: int = 10_000) -> list[str]:
        """App users whose connection lacks its Calendly user URI (rows from older systems)."""
        ...


class ChangeReader(Protocol):
    """Where live updates read a user's meeting changes, each call on its own and under that
    user's tenant. An adapter may serve concurrent reads of many users in one round trip (each
    still under its own tenant); a call returns what was committed before it began."""

    async def latest(self, user_id: str) -> int:
        """The user's highest change number (0: none yet)."""
        ...

    async def since(self, user_id: str, after: int, limit: int) -> Sequence[MeetingView]:
        """As `MeetingRepository.changed_since`."""
        ...


class DeliveryRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One signed delivery as it is to be recorded (and, with `change`, applied)."""

    event_id: str
    event_type: str
    payload: bytes
    # The connection it was routed to; None for a delivery no connected user was found for.
    route: Route | None
    outcome: WebhookOutcome
    reason: str | None = None
    # Merged into the route's meeting in the same transaction, unless the delivery is a
    # duplicate (then nothing of it takes effect).
    change: MeetingChange | None = None


class DeliveryLedger(Protocol):
    """Where the webhook path finds routes and records deliveries, each call on its own.

    An adapter may serve concurrent calls together: one round trip and one commit for many
    deliveries (group commit, DR-48). Whatever it does, a call returns only once its own answer
    is final (`record`: committed), and one delivery's failure never fails another's: the
    caller sees the same outcomes as with one transaction per call.
    """

    async def route(
        self,
        *,
        webhook_token: str | None = None,
        calendly_user_uris: Sequence[str] = (),
        fresh: bool = False,
    ) -> Route | None:
        """As `WebhookRouteRepository.find`, outside any transaction of the caller's.

        Without `fresh`, a route found by its token may be one read earlier (`kept`; never a
        None read earlier): it may be out of date, which `record` finds out.
        """
        ...

    async def record(self, delivery: DeliveryRecord) -> bool:
        """Record (and apply) `delivery` and commit; False when it was a duplicate.

        Raises RouteChanged, having written nothing, when the delivery's route (its
        `version`) is no longer its connection's. Raises StorageUnavailable when the database
        cannot say (nothing may be assumed committed then: a retry is deduplicated).
        """
        ...


class ErasedData(msgspec.Struct, frozen=True, kw_only=True):
    """How many rows of one user an erasure removed, table by table."""

    connections: int = 0
    meetings: int = 0
    invitees: int = 0
    webhook_deliveries: int = 0
    oauth_states: int = 0
    host_notifications: int = 0
    maintenance: int = 0
    # Entries of the change feed (the host was told of them, or erased them unread).
    changes: int = 0


class UserDataEraser(Protocol):
    """Everything stored about the tenant, removed at once (an erasure on the host's behalf)."""

    async def erase(self, user_id: str) -> ErasedData:
        """Delete the tenant's connection, meetings, invitees, deliveries and every other row
        keyed by the user, in this transaction. The caller holds the user's meetings lock and
        has made sure the connection is disconnected (no grant is dropped unrevoked).
        """
        ...


class UnitOfWork(Protocol):
    """One transaction on behalf of one tenant; leaving without `commit()` rolls back."""

    connections: ConnectionRepository
    authorizations: AuthorizationRepository
    meetings: MeetingRepository
    webhook_events: WebhookEventLog
    routes: WebhookRouteRepository
    erasure: UserDataEraser

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def act_as(self, user_id: str) -> None:
        """Make `user_id` the tenant for the rest of the transaction (row-level security)."""
        ...

    async def lock(self, name: str) -> None:
        """Hold a named lock, across processes, until the transaction ends."""
        ...

    async def commit(self) -> None: ...


class UnitOfWorkFactory(Protocol):
    def __call__(self, user_id: str | None = None) -> UnitOfWork:
        """A unit of work acting as `user_id` (None: no tenant yet, as for a webhook)."""
        ...


# ------------------------------------------------------- the host's server API
class ListedConnection(msgspec.Struct, frozen=True, kw_only=True):
    """One user's connection as the host's list shows it: its state, never a secret."""

    id: str
    user_id: str
    status: ConnectionStatus
    account: CalendlyAccount | None
    webhook_status: WebhookStatus
    token_expires_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    connected_at: datetime | None
    trouble: MaintenanceTrouble | None = None


class ConnectionListQuery(msgspec.Struct, frozen=True, kw_only=True):
    status: ConnectionStatus | None = None
    # Keyset cursor: the (created_at, id) of the last connection on the previous page.
    after: tuple[datetime, str] | None = None
    limit: int = 50


class ConnectionDirectory(Protocol):
    """Every user's connection, read across tenants for the host's back end (DR-30).

    The one deliberate exception to row-level security: read-only, and only these columns.
    """

    async def list(self, query: ConnectionListQuery) -> Sequence[ListedConnection]:
        """Connections by (created_at, id), after `query.after`, at most `query.limit`."""
        ...


class ApiKeyStore(Protocol):
    """The server API's keys (not per tenant); a key is kept only as its SHA-256 digest."""

    async def add(self, key: ApiKey, digest: bytes) -> bool:
        """Store a new key; False (nothing stored) when its prefix is taken already."""
        ...

    async def all(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first."""
        ...

    async def find(self, digest: bytes) -> ApiKey | None:
        """The key with this digest (revoked or not), by one indexed lookup."""
        ...

    async def get(self, *, key_id: str | None = None, prefix: str | None = None) -> ApiKey | None:
        """The key with this id, or with this prefix."""
        ...

    async def revoke(self, key_id: str, at: datetime) -> ApiKey | None:
        """Revoke the key at `at` unless it is revoked already; the key as it is now."""
        ...

    async def record_use(self, used: Mapping[str, datetime]) -> None:
        """Note when keys (by id) were last used; a time less than a minute after the one
        stored already is not written (at most one write per key and minute)."""
        ...


# -------------------------------------------------------------------- misc
class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class Randomness(Protocol):
    def token(self, nbytes: int = 32) -> str:
        """A URL-safe random string with `nbytes` of entropy (from a CSPRNG)."""
        ...

    def uuid(self) -> str: ...


# ---------------------------------------------------------------- maintenance
class MaintenanceDue(msgspec.Struct, frozen=True, kw_only=True):
    """A connection a worker has claimed, and what is due for it."""

    connection_id: str
    user_id: str
    # When Calendly's acceptance of the grant is to be proved again (DR-45).
    grant_due: datetime
    subscription_due: datetime
    sync_due: datetime
    synced_at: datetime | None
    failures: int = 0
    # Meetings wait for their details from Calendly (DR-47); None: none do.
    enrich_due: datetime | None = None
    # The queue's time at the claim: what it found due is due for the pass too, whatever the
    # process's own clock says.
    claimed_at: datetime | None = None


class MaintenanceResult(msgspec.Struct, frozen=True, kw_only=True):
    """When each kind of work is due next (None: leave as it is), and what went wrong."""

    subscription_due: datetime | None = None
    sync_due: datetime | None = None
    grant_due: datetime | None = None
    synced_at: datetime | None = None
    # With `enriched`, when meetings are next to be completed from Calendly (None: none wait
    # any more); without it, the request is left as it is.
    enriched: bool = False
    enrich_due: datetime | None = None
    # Whether the connection's webhooks work (an outage's follow-up sweep checks only these).
    webhooks: bool | None = None
    error: str | None = None
    # Not to be claimed again before this (a back-off after an error); None: as soon as due.
    retry_at: datetime | None = None
    # The error was a rate limit, waited out by `retry_at`: it does not count as a failure in
    # a row (so it does not lengthen the next back-off).
    rate_limited: bool = False


class MaintenanceQueue(Protocol):
    """Per-connection maintenance, claimed under leases that expire (across processes)."""

    async def claim(
        self, *, owner: str, limit: int, lease_seconds: float, now: datetime | None = None
    ) -> list[MaintenanceDue]:
        """Lease up to `limit` connections with work due by `now` (None: the queue's own
        clock, one for every worker), soonest first; none is leased to two owners."""
        ...

    async def complete(self, due: MaintenanceDue, owner: str, result: MaintenanceResult) -> None:
        """Record the outcome and release the lease (a no-op if the lease was lost)."""
        ...

    async def heartbeat(self, owner: str) -> None: ...
