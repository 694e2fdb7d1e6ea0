"""Read-only questions: a signed-in user's (my connection, my meetings), the host's (everyone's)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from domain.changes import Change, ChangeFeed, ChangePosition
from domain.errors import ConnectionNotFound
from domain.ports import (
    ChangeReader,
    ConnectionDirectory,
    ConnectionListQuery,
    MeetingQuery,
    MeetingView,
    UnitOfWorkFactory,
)
from domain.usecases.views import ConnectionView

MAX_PAGE = 200


class GetConnectionStatus:
    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def __call__(self, user_id: str) -> ConnectionView:
        """Raises ConnectionNotFound when the user never connected."""
        async with self._uow(user_id) as uow:
            connection = await uow.connections.get(user_id)
            state = await uow.connections.maintenance(user_id) if connection else None
        if connection is None:
            raise ConnectionNotFound(user_id)
        return ConnectionView.of(
            connection,
            state.trouble if state else None,
            synced_at=state.synced_at if state else None,
        )


class MeetingsPage(msgspec.Struct, frozen=True, kw_only=True):
    meetings: Sequence[MeetingView]
    # Pass as `after` for the next page; None on the last page.
    next_after: tuple[datetime | None, str] | None


class ListMeetings:
    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def __call__(self, user_id: str, query: MeetingQuery) -> MeetingsPage:
        limit = max(1, min(query.limit, MAX_PAGE))
        bounded = msgspec.structs.replace(query, limit=limit + 1)
        async with self._uow(user_id) as uow:
            rows = await uow.meetings.list(user_id, bounded)
        page = rows[:limit]
        next_after = None
        if len(rows) > limit and page:
            last = page[-1]
            next_after = (last.meeting.start_time, last.id)
        return MeetingsPage(meetings=page, next_after=next_after)


class UserConnection(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    connection: ConnectionView


class ConnectionsPage(msgspec.Struct, frozen=True, kw_only=True):
    connections: Sequence[UserConnection]
    # Pass as `after` for the next page; None on the last page.
    next_after: tuple[datetime, str] | None


class ListConnections:
    """Every user's connection, for the host's back end (the server API): across tenants."""

    def __init__(self, directory: ConnectionDirectory) -> None:
        self._directory = directory

    async def __call__(self, query: ConnectionListQuery) -> ConnectionsPage:
        limit = max(1, min(query.limit, MAX_PAGE))
        rows = await self._directory.list(msgspec.structs.replace(query, limit=limit + 1))
        page = rows[:limit]
        next_after = None
        if len(rows) > limit and page:
            next_after = (page[-1].created_at, page[-1].id)
        return ConnectionsPage(
            connections=[
                UserConnection(user_id=row.user_id, connection=ConnectionView.listed(row))
                for row in page
            ],
            next_after=next_after,
        )


class Changes(msgspec.Struct, frozen=True, kw_only=True):
    meetings: Sequence[MeetingView]
    # Resume from here next time (the highest change seen).
    cursor: int
    # More changes are waiting beyond this batch.
    more: bool


class UnitOfWorkChangeReader(ChangeReader):
    """A ChangeReader of one unit of work per call: the fakes' reader, and the reference the
    service's batching reader is held to."""

    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def latest(self, user_id: str) -> int:
        async with self._uow(user_id) as uow:
            return await uow.meetings.latest_change(user_id)

    async def since(self, user_id: str, after: int, limit: int) -> Sequence[MeetingView]:
        async with self._uow(user_id) as uow:
            return await uow.meetings.changed_since(user_id, after, limit)


class MeetingChanges:
    """What changed in the user's meetings since a cursor (for live updates)."""

    def __init__(self, reader: ChangeReader, batch: int = 100) -> None:
        self._reader = reader
        self._batch = batch

    async def __call__(self, user_id: str, after: int | None) -> Changes:
        """With no cursor, nothing is sent: the answer is where to start from."""
        if after is None:
            return Changes(meetings=(), cursor=await self._reader.latest(user_id), more=False)
        rows = await self._reader.since(user_id, after, self._batch + 1)
        page = rows[: self._batch]
        cursor = max((m.change_seq for m in page), default=after)
        return Changes(meetings=page, cursor=cursor, more=len(rows) > self._batch)


class ChangesPage(msgspec.Struct, frozen=True, kw_only=True):
    changes: Sequence[Change]
    # Where to read on from: the last change's position, or `after` when there was none.
    next_after: ChangePosition | None


class ReadChanges:
    """The change feed, page by page, for the host's back end (across tenants; DR-31)."""

    def __init__(self, feed: ChangeFeed) -> None:
        self._feed = feed

    async def __call__(self, after: ChangePosition | None, limit: int) -> ChangesPage:
        changes = await self._feed.read(after, max(1, min(limit, MAX_PAGE)))
        return ChangesPage(changes=changes, next_after=changes[-1].position if changes else after)
