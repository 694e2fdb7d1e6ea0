"""An in-memory database with transactions, tenants and locks, for unit tests of the core."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from msgspec.structs import replace

from domain.errors import AccountAlreadyConnected, ConcurrentUpdate, StorageUnavailable
from domain.meetings import Invitee, Meeting
from domain.model import Connection, PendingAuthorization
from domain.ports import (
    AuthorizationRepository,
    ConnectionRepository,
    MaintenanceTrouble,
    MeetingChange,
    MeetingQuery,
    MeetingRepository,
    MeetingView,
    Route,
    UnitOfWork,
    UnitOfWorkFactory,
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


@dataclass
class FakeDatabase:
    """Shared state; each FakeUnitOfWork stages its writes and publishes them on commit."""

    connections: dict[str, Connection] = field(default_factory=dict)
    authorizations: dict[str, PendingAuthorization] = field(default_factory=dict)
    meetings: dict[tuple[str, str], MeetingRow] = field(default_factory=dict)
    invitees: dict[tuple[str, str], Invitee] = field(default_factory=dict)
    events: dict[str, EventRecord] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # Commits that changed something (a commit of nothing is not a write).
    writes: int = 0
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    unavailable: bool = False
    # What was asked of the database, for tests of what a request may cost.
    units_opened: int = 0
    # The maintenance queue's failures per user (the fake has no queue: tests set them).
    trouble: dict[str, MaintenanceTrouble] = field(default_factory=dict)
    route_lookups: list[tuple[str | None, tuple[str, ...]]] = field(default_factory=list)

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

    async def trouble(self, user_id: str) -> MaintenanceTrouble | None:
        return self._uow.db.trouble.get(user_id)


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

    async def apply(self, connection: Connection, change: MeetingChange) -> None:
        # Like Postgres: one user's changes take turns, each numbered after the user's last.
        await self._uow.hold(f"meetings:{connection.user_id}")
        db, staged = self._uow.db, self._uow.staged
        now = datetime.now(tz=UTC)
        key = (connection.id, change.meeting.event_uri)
        row = self._row(key)
        merged = change.meeting if row is None else row.meeting.merged_with(change.meeting)
        rows = {**db.meetings, **staged.meetings}.values()
        last = max((r.change_seq for r in rows if r.user_id == connection.user_id), default=0)
        staged.meetings[key] = MeetingRow(
            id=row.id if row else str(uuid.UUID(int=next(db.seq))),
            user_id=connection.user_id,
            meeting=merged,
            updated_at=now,
            change_seq=last + 1,
        )
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

    async def changed_since(self, user_id: str, after: int, limit: int) -> Sequence[MeetingView]:
        views = [
            v for v in await self.list(user_id, MeetingQuery(limit=10**9)) if v.change_seq > after
        ]
        views.sort(key=lambda v: v.change_seq)
        return views[:limit]

    async def latest_change(self, user_id: str) -> int:
        views = await self.list(user_id, MeetingQuery(limit=10**9))
        return max((v.change_seq for v in views), default=0)


class FakeWebhookEventLog(WebhookEventLog):
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    async def record(
        self,
        *,
        event_id: str,
        event_type: str,
        payload: bytes,
        connection: Connection | None,
        outcome: WebhookOutcome,
        reason: str | None = None,
    ) -> bool:
        await self._uow.hold(f"event:{event_id}")  # like a unique index: the second one waits
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
        )

    async def users_without_account(self, limit: int = 10_000) -> list[str]:
        found = sorted(
            c.user_id
            for c in self._uow.db.connections.values()
            if c.is_connected and c.account is None
        )
        return found[:limit]


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
        self.staged = _Staged()


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
