"""An in-memory database with transactions, tenants and locks, for unit tests of the core."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from msgspec.structs import replace

from domain.api_keys import ApiKey
from domain.changes import Change, ChangeFeed, ChangePosition
from domain.errors import (
    AccountAlreadyConnected,
    ConcurrentUpdate,
    CursorExpired,
    RouteChanged,
    StorageUnavailable,
)
from domain.meetings import Invitee, Meeting
from domain.model import Connection, PendingAuthorization
from domain.ports import (
    ApiKeyStore,
    AuthorizationRepository,
    ConnectionDirectory,
    ConnectionListQuery,
    ConnectionRef,
    ConnectionRepository,
    DetailsWanted,
    ErasedData,
    ListedConnection,
    MaintenanceState,
    MaintenanceTrouble,
    MeetingChange,
    MeetingQuery,
    MeetingRepository,
    MeetingView,
    Route,
    UnitOfWork,
    UnitOfWorkFactory,
    UserDataEraser,
    WebhookEventLog,
    WebhookOutcome,
    WebhookRouteRepository,
)


@dataclass
class EventRecord:
    event_id: str
    event_type: str
    payload: bytes
    user_id: str | None
    outcome: WebhookOutcome
    reason: str | None


@dataclass
class MeetingRow:
    id: str
    user_id: str
    meeting: Meeting
    updated_at: datetime
    change_seq: int
    # As migrations/0015: when the event's details were last asked for (None: not waiting),
    # and why Calendly would not give them.
    details_requested_at: datetime | None = None
    details_error: str | None = None
    details_failures: int = 0
    details_retry_at: datetime | None = None


@dataclass
class FakeDatabase:
    """Shared state; each FakeUnitOfWork stages its writes and publishes them on commit."""

    connections: dict[str, Connection] = field(default_factory=dict)
    authorizations: dict[str, PendingAuthorization] = field(default_factory=dict)
    meetings: dict[tuple[str, str], MeetingRow] = field(default_factory=dict)
    invitees: dict[tuple[str, str], Invitee] = field(default_factory=dict)
    events: dict[str, EventRecord] = field(default_factory=dict)
    # The last change number given to each user's meetings (migrations/0016): kept through
    # deletions and erasures, so a number is never given twice.
    meeting_seqs: dict[str, int] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # Commits that changed something (a commit of nothing is not a write).
    writes: int = 0
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    unavailable: bool = False
    # What was asked of the database, for tests of what a request may cost.
    units_opened: int = 0
    # The maintenance queue's failures and last syncs per user (the fake has no queue: tests
    # set them).
    trouble: dict[str, MaintenanceTrouble] = field(default_factory=dict)
    synced: dict[str, datetime] = field(default_factory=dict)
    route_lookups: list[tuple[str | None, tuple[str, ...]]] = field(default_factory=list)
    # Connections with meetings waiting for their details, and since when (the fake has no
    # queue: tests read it).
    enrich_due: dict[str, datetime | None] = field(default_factory=dict)

    def lock_for(self, name: str) -> asyncio.Lock:
        return self.locks.setdefault(name, asyncio.Lock())

    def factory(self) -> UnitOfWorkFactory:
        def make(user_id: str | None = None) -> UnitOfWork:
            return FakeUnitOfWork(self, user_id)

        return make


class _Staged:
    def __init__(self) -> None:
        self.connections: dict[str, Connection] = {}
        self.authorizations: dict[str, PendingAuthorization | None] = {}
        self.meetings: dict[tuple[str, str], MeetingRow] = {}
        self.invitees: dict[tuple[str, str], Invitee] = {}
        self.events: dict[str, EventRecord] = {}
        self.meeting_seqs: dict[str, int] = {}
        # Users whose every row goes at commit (an erasure).
        self.erased: set[str] = set()


class FakeConnectionRepository(ConnectionRepository):
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    async def get(self, user_id: str, *, for_update: bool = False) -> Connection | None:
        if self._uow.tenant != user_id:
            return None  # row-level security: other tenants' rows do not exist
        if for_update:
            await self._uow.hold(f"row:{user_id}")
        staged = self._uow.staged.connections.get(user_id)
        return staged or self._uow.db.connections.get(user_id)

    def _check_unique(self, connection: Connection) -> None:
        if connection.account is None or not connection.is_connected:
            return
        for other in self._uow.db.connections.values():
            if (
                other.user_id != connection.user_id
                and other.is_connected
                and other.account is not None
                and other.account.user_uri == connection.account.user_uri
            ):
                raise AccountAlreadyConnected(connection.account.user_uri)

    async def add(self, connection: Connection) -> Connection:
        assert self._uow.tenant == connection.user_id, "writes only as the tenant"
        self._check_unique(connection)
        if connection.user_id in self._uow.db.connections:
            raise ConcurrentUpdate("a connection for this user exists")
        stored = replace(connection, version=1)
        self._uow.staged.connections[connection.user_id] = stored
        return stored

    async def save(self, connection: Connection) -> Connection:
        assert self._uow.tenant == connection.user_id, "writes only as the tenant"
        current = await self.get(connection.user_id)
        if current is None or current.version != connection.version:
            raise ConcurrentUpdate(f"connection {connection.id} changed meanwhile")
        self._check_unique(connection)
        stored = replace(connection, version=connection.version + 1)
        self._uow.staged.connections[connection.user_id] = stored
        return stored

    async def maintenance(self, user_id: str) -> MaintenanceState | None:
        db = self._uow.db
        if user_id not in db.trouble and user_id not in db.synced:
            return None
        return MaintenanceState(synced_at=db.synced.get(user_id), trouble=db.trouble.get(user_id))


class FakeAuthorizationRepository(AuthorizationRepository):
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    async def add(self, pending: PendingAuthorization) -> None:
        self._uow.staged.authorizations[pending.state] = pending

    async def peek(self, state: str) -> PendingAuthorization | None:
        staged = self._uow.staged.authorizations
        return staged[state] if state in staged else self._uow.db.authorizations.get(state)

    async def take(self, state: str) -> PendingAuthorization | None:
        staged = self._uow.staged.authorizations
        found = staged[state] if state in staged else self._uow.db.authorizations.get(state)
        staged[state] = None
        return found


class FakeMeetingRepository(MeetingRepository):
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    def _row(self, key: tuple[str, str]) -> MeetingRow | None:
        return self._uow.staged.meetings.get(key) or self._uow.db.meetings.get(key)

    async def apply(self, connection: ConnectionRef, change: MeetingChange) -> None:
        # Like Postgres: one user's changes take turns, each numbered after the user's last.
        await self._uow.hold(f"meetings:{connection.user_id}")
        db, staged = self._uow.db, self._uow.staged
        now = datetime.now(tz=UTC)
        key = (connection.id, change.meeting.event_uri)
        row = self._row(key)
        merged = change.meeting if row is None else row.meeting.merged_with(change.meeting)
        last = self._last_seq(connection.user_id)
        staged.meeting_seqs[connection.user_id] = last + 1
        requested_at = row.details_requested_at if row else None
        details_error = row.details_error if row else None
        failures, retry_at = (row.details_failures, row.details_retry_at) if row else (0, None)
        if change.needs_details:
            # Each request's time is its own (Postgres: the transaction's start).
            requested_at = max(now, (requested_at or now) + timedelta(microseconds=1))
            details_error, failures, retry_at = None, 0, None
        elif requested_at is not None and requested_at == change.details_for:
            requested_at, details_error = None, change.details_error
            failures, retry_at = 0, None
        staged.meetings[key] = MeetingRow(
            id=row.id if row else str(uuid.UUID(int=next(db.seq))),
            user_id=connection.user_id,
            meeting=merged,
            updated_at=now,
            change_seq=last + 1,
            details_requested_at=requested_at,
            details_error=details_error,
            details_failures=failures,
            details_retry_at=retry_at,
        )
        if change.needs_details:
            db.enrich_due[connection.id] = requested_at
        if change.invitee is None:
            return
        ikey = (connection.id, change.invitee.invitee_uri)
        existing = staged.invitees.get(ikey) or db.invitees.get(ikey)
        invitee = change.invitee if existing is None else existing.merged_with(change.invitee)
        if change.no_show is not None and change.no_show_at is not None:
            invitee = invitee.with_no_show(change.no_show, change.no_show_at)
        staged.invitees[ikey] = invitee

    async def list(self, user_id: str, query: MeetingQuery) -> Sequence[MeetingView]:
        if self._uow.tenant != user_id:
            return []
        rows = {**self._uow.db.meetings, **self._uow.staged.meetings}
        invitees = {**self._uow.db.invitees, **self._uow.staged.invitees}
        views = []
        for (connection_id, event_uri), row in rows.items():
            if row.user_id != user_id:
                continue
            m = row.meeting
            if query.status is not None and m.status != query.status:
                continue
            if query.starts_after and (m.start_time is None or m.start_time < query.starts_after):
                continue
            if query.starts_before and (
                m.start_time is None or m.start_time >= query.starts_before
            ):
                continue
            mine = tuple(
                i
                for (cid, _), i in invitees.items()
                if cid == connection_id and i.event_uri == event_uri
            )
            views.append(
                MeetingView(
                    id=row.id,
                    meeting=m,
                    invitees=mine,
                    updated_at=row.updated_at,
                    change_seq=row.change_seq,
                    details=(
                        "pending"
                        if row.details_requested_at is not None
                        else "unavailable"
                        if row.details_error is not None
                        else "complete"
                    ),
                    details_error=row.details_error,
                )
            )
        far = datetime.max.replace(tzinfo=UTC)

        def order(v: MeetingView) -> tuple[datetime, str]:
            return (v.meeting.start_time or far, v.id)

        views.sort(key=order)
        if query.after is not None:
            after = (query.after[0] or far, query.after[1])
            views = [v for v in views if order(v) > after]
        return views[: query.limit]

    def _wanting(self, connection_id: str) -> Sequence[tuple[tuple[str, str], MeetingRow]]:
        rows = {**self._uow.db.meetings, **self._uow.staged.meetings}
        return [
            (key, row)
            for key, row in rows.items()
            if key[0] == connection_id
            and row.details_requested_at is not None
            and row.user_id == self._uow.tenant
        ]

    async def wanting_details(self, connection_id: str, limit: int) -> Sequence[DetailsWanted]:
        now = datetime.now(tz=UTC)  # as Postgres: the database's clock
        wanted = sorted(
            (row.details_requested_at, key[1])
            for key, row in self._wanting(connection_id)
            if row.details_requested_at is not None
            and (row.details_retry_at is None or row.details_retry_at <= now)
        )
        return [DetailsWanted(event_uri=uri, requested_at=at) for at, uri in wanted[:limit]]

    async def next_details_due(self, connection_id: str) -> datetime | None:
        due = [
            row.details_retry_at or row.details_requested_at
            for _, row in self._wanting(connection_id)
        ]
        return min((d for d in due if d is not None), default=None)

    async def postpone_details(
        self,
        connection_id: str,
        request: DetailsWanted,
        error: str,
        *,
        base: timedelta,
        cap: timedelta,
    ) -> None:
        key = (connection_id, request.event_uri)
        row = self._row(key)
        if row is None or row.details_requested_at != request.requested_at:
            return
        wait = min(cap, base * 2 ** min(row.details_failures, 16))
        self._uow.staged.meetings[key] = replace_row(
            row,
            details_error=error,
            details_failures=row.details_failures + 1,
            details_retry_at=datetime.now(tz=UTC) + wait,
        )

    async def changed_since(self, user_id: str, after: int, limit: int) -> Sequence[MeetingView]:
        views = [
            v for v in await self.list(user_id, MeetingQuery(limit=10**9)) if v.change_seq > after
        ]
        views.sort(key=lambda v: v.change_seq)
        return views[:limit]

    async def latest_change(self, user_id: str) -> int:
        if self._uow.tenant != user_id:
            return 0  # another tenant's counter is not visible (row-level security)
        return self._last_seq(user_id)

    def _last_seq(self, user_id: str) -> int:
        """The last change number given to the user's meetings, this transaction's included."""
        staged, db = self._uow.staged, self._uow.db
        return staged.meeting_seqs.get(user_id, db.meeting_seqs.get(user_id, 0))


def replace_row(row: MeetingRow, **changes: Any) -> MeetingRow:
    return dataclasses.replace(row, **changes)


def route_version(connection: Connection) -> str:
    """The version of `connection`'s route: it changes whenever the route would."""
    key = connection.signing_key.reveal() if connection.signing_key is not None else None
    account = connection.account.user_uri if connection.account is not None else None
    status = connection.status
    facts = (connection.user_id, connection.id, connection.webhook_token, account, key, status)
    return hashlib.sha256(repr(facts).encode()).hexdigest()[:16]


class FakeWebhookEventLog(WebhookEventLog):
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

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
        await self._uow.hold(f"event:{event_id}")  # like a unique index: the second one waits
        if connection is not None:
            # Written only under the connection's route as it is now (DR-60), like Postgres.
            current = self._uow.db.connections.get(connection.user_id)
            version = connection.version if isinstance(connection, Route) else None
            if (
                current is None
                or current.id != connection.id
                or not current.is_connected
                or current.account is None
                or (version is not None and version != route_version(current))
            ):
                raise RouteChanged(connection.id)
        if event_id in self._uow.db.events or event_id in self._uow.staged.events:
            return False
        self._uow.staged.events[event_id] = EventRecord(
            event_id=event_id,
            event_type=event_type,
            payload=payload,
            user_id=connection.user_id if connection else None,
            outcome=outcome,
            reason=reason,
        )
        if change is not None and connection is not None:
            await self._uow.meetings.apply(connection, change)
        return True


class FakeWebhookRouteRepository(WebhookRouteRepository):
    """Routes are read from committed connections, outside any tenant (like Postgres)."""

    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    async def find(
        self, *, webhook_token: str | None = None, calendly_user_uris: Sequence[str] = ()
    ) -> Route | None:
        db = self._uow.db
        db.route_lookups.append((webhook_token, tuple(calendly_user_uris)))
        connected = [c for c in db.connections.values() if c.is_connected and c.account]
        found = None
        if webhook_token is not None:
            found = next((c for c in connected if c.webhook_token == webhook_token), None)
        else:
            by_uri = {c.account.user_uri: c for c in connected if c.account is not None}
            found = next((by_uri[u] for u in calendly_user_uris if u in by_uri), None)
        if found is None or found.account is None:
            return None
        return Route(
            user_id=found.user_id,
            connection_id=found.id,
            calendly_user_uri=found.account.user_uri,
            signing_key=found.signing_key,
            version=route_version(found),
        )

    async def users_without_account(self, limit: int = 10_000) -> list[str]:
        found = sorted(
            c.user_id
            for c in self._uow.db.connections.values()
            if c.is_connected and c.account is None
        )
        return found[:limit]


class FakeUserDataEraser(UserDataEraser):
    """Counts what the tenant has, and has it all removed when the unit of work commits."""

    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    async def erase(self, user_id: str) -> ErasedData:
        assert self._uow.tenant == user_id, "erases only as the tenant"
        db, staged = self._uow.db, self._uow.staged
        connection = staged.connections.get(user_id) or db.connections.get(user_id)
        meetings = {**db.meetings, **staged.meetings}
        invitees = {**db.invitees, **staged.invitees}
        mine = {cid for (cid, _), row in meetings.items() if row.user_id == user_id}
        staged.erased.add(user_id)
        return ErasedData(
            connections=int(connection is not None),
            meetings=sum(row.user_id == user_id for row in meetings.values()),
            invitees=sum(cid in mine for (cid, _) in invitees),
            webhook_deliveries=sum(
                e.user_id == user_id for e in {**db.events, **staged.events}.values()
            ),
            oauth_states=sum(a.user_id == user_id for a in db.authorizations.values()),
        )


def forget_user(db: FakeDatabase, user_id: str) -> None:
    """Remove every row of `user_id` (what a committed erasure does)."""
    connection = db.connections.pop(user_id, None)
    ids = {row_key[0] for row_key, row in db.meetings.items() if row.user_id == user_id}
    if connection is not None:
        ids.add(connection.id)
    db.meetings = {k: r for k, r in db.meetings.items() if r.user_id != user_id}
    db.invitees = {k: i for k, i in db.invitees.items() if k[0] not in ids}
    db.events = {k: e for k, e in db.events.items() if e.user_id != user_id}
    db.authorizations = {k: a for k, a in db.authorizations.items() if a.user_id != user_id}
    db.trouble.pop(user_id, None)


class FakeUnitOfWork(UnitOfWork):
    def __init__(self, db: FakeDatabase, tenant: str | None) -> None:
        self.db = db
        self.tenant = tenant
        self.staged = _Staged()
        self.held: list[asyncio.Lock] = []
        self.connections = FakeConnectionRepository(self)
        self.authorizations = FakeAuthorizationRepository(self)
        self.meetings = FakeMeetingRepository(self)
        self.webhook_events = FakeWebhookEventLog(self)
        self.routes = FakeWebhookRouteRepository(self)
        self.erasure = FakeUserDataEraser(self)

    async def __aenter__(self) -> Self:
        self.db.units_opened += 1
        if self.db.unavailable:
            raise StorageUnavailable("the fake database is down")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.staged = _Staged()  # anything not committed is rolled back
        for lock in reversed(self.held):
            lock.release()
        self.held.clear()

    async def hold(self, name: str) -> None:
        lock = self.db.lock_for(name)
        if lock in self.held:
            return
        await lock.acquire()
        self.held.append(lock)

    async def act_as(self, user_id: str) -> None:
        self.tenant = user_id

    async def lock(self, name: str) -> None:
        await self.hold(f"advisory:{name}")

    async def commit(self) -> None:
        db, staged = self.db, self.staged
        if db.unavailable:  # the database went away during the transaction
            raise StorageUnavailable("the fake database is down")
        if any(
            (
                staged.connections,
                staged.authorizations,
                staged.meetings,
                staged.invitees,
                staged.events,
                staged.erased,
            )
        ):
            db.writes += 1
        db.connections.update(staged.connections)
        for state, pending in staged.authorizations.items():
            if pending is None:
                db.authorizations.pop(state, None)
            else:
                db.authorizations[state] = pending
        db.meetings.update(staged.meetings)
        db.invitees.update(staged.invitees)
        db.events.update(staged.events)
        db.meeting_seqs.update(staged.meeting_seqs)
        for user_id in staged.erased:
            forget_user(db, user_id)
        self.staged = _Staged()


class FakeConnectionDirectory(ConnectionDirectory):
    """Every committed connection, across tenants, as the host's list reads them."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def list(self, query: ConnectionListQuery) -> Sequence[ListedConnection]:
        if self._db.unavailable:
            raise StorageUnavailable("the fake database is down")
        listed = sorted(
            (
                ListedConnection(
                    id=c.id,
                    user_id=c.user_id,
                    status=c.status,
                    account=c.account,
                    webhook_status=c.webhook_status,
                    token_expires_at=c.tokens.expires_at if c.tokens else None,
                    last_error=c.last_error,
                    created_at=c.created_at,
                    updated_at=c.updated_at,
                    connected_at=c.connected_at,
                    trouble=self._db.trouble.get(c.user_id),
                )
                for c in self._db.connections.values()
                if query.status is None or c.status is query.status
            ),
            key=lambda c: (c.created_at, c.id),
        )
        if query.after is not None:
            after = query.after
            listed = [c for c in listed if (c.created_at, c.id) > after]
        return listed[: query.limit]


@dataclass
class FakeApiKeyStore(ApiKeyStore):
    """Keys in memory, by digest; counts its lookups (what the cache must spare)."""

    keys: dict[bytes, ApiKey] = field(default_factory=dict)
    lookups: int = 0
    unavailable: bool = False
    # Every record_use call, as it came.
    uses: list[dict[str, datetime]] = field(default_factory=list)

    def _check(self) -> None:
        if self.unavailable:
            raise StorageUnavailable("the fake database is down")

    async def add(self, key: ApiKey, digest: bytes) -> bool:
        self._check()
        if any(k.prefix == key.prefix for k in self.keys.values()):
            return False
        self.keys[digest] = key
        return True

    async def all(self) -> list[ApiKey]:
        self._check()
        return sorted(self.keys.values(), key=lambda k: (k.created_at, k.id))

    async def find(self, digest: bytes) -> ApiKey | None:
        self._check()
        self.lookups += 1
        return self.keys.get(digest)

    async def get(self, *, key_id: str | None = None, prefix: str | None = None) -> ApiKey | None:
        self._check()
        for key in self.keys.values():
            if (key_id is not None and key.id == key_id) or (
                prefix is not None and key.prefix == prefix
            ):
                return key
        return None

    async def revoke(self, key_id: str, at: datetime) -> ApiKey | None:
        self._check()
        for digest, key in self.keys.items():
            if key.id == key_id:
                if key.revoked_at is None:
                    self.keys[digest] = key = replace(key, revoked_at=at)
                return key
        return None

    async def record_use(self, used: Mapping[str, datetime]) -> None:
        self._check()
        self.uses.append(dict(used))
        for digest, key in self.keys.items():
            at = used.get(key.id)
            if at is not None and (
                key.last_used_at is None or key.last_used_at <= at - timedelta(minutes=1)
            ):
                self.keys[digest] = replace(key, last_used_at=at)


def meetings_of(db: FakeDatabase, user_id: str) -> dict[str, Any]:
    """Test helper: {event_uri: (meeting, {invitee_uri: invitee})} for one user."""
    result: dict[str, Any] = {}
    for (cid, event_uri), row in db.meetings.items():
        if row.user_id != user_id:
            continue
        invitees = {
            uri: i
            for (icid, uri), i in db.invitees.items()
            if icid == cid and i.event_uri == event_uri
        }
        result[event_uri] = (row.meeting, invitees)
    return result


class ScriptedChangeFeed(ChangeFeed):
    """The change feed as a list a test fills in: Postgres writes the real one with triggers
    (migrations/0008), tested in tests/integration/test_change_feed.py; this one lets the HTTP
    tests check how pages are asked for and answered."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.unavailable = False
        # Where the log was pruned up to (migrations/0010): a cursor before it has expired.
        self.pruned_up_to = ChangePosition(0, 0)

    async def read(self, after: ChangePosition | None, limit: int) -> Sequence[Change]:
        if self.unavailable:
            raise StorageUnavailable("the fake database is down")
        if after is not None and after < self.pruned_up_to:
            raise CursorExpired
        ordered = sorted(self.changes, key=lambda change: change.position)
        later = [c for c in ordered if after is None or c.position > after]
        return later[:limit]
