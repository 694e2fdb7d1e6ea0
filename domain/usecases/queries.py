"""Read-only questions a signed-in user asks: my connection, my meetings."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from domain.errors import ConnectionNotFound
from domain.ports import MeetingQuery, MeetingView, UnitOfWorkFactory
from domain.usecases.views import ConnectionView

MAX_PAGE = 200


class GetConnectionStatus:
    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def __call__(self, user_id: str) -> ConnectionView:
        """Raises ConnectionNotFound when the user never connected."""
        async with self._uow(user_id) as uow:
            connection = await uow.connections.get(user_id)
            trouble = await uow.connections.trouble(user_id) if connection else None
        if connection is None:
            raise ConnectionNotFound(user_id)
        return ConnectionView.of(connection, trouble)


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


class Changes(msgspec.Struct, frozen=True, kw_only=True):
    meetings: Sequence[MeetingView]
    # Resume from here next time (the highest change seen).
    cursor: int
    # More changes are waiting beyond this batch.
    more: bool


class MeetingChanges:
    """What changed in the user's meetings since a cursor (for live updates)."""

    def __init__(self, uow: UnitOfWorkFactory, batch: int = 100) -> None:
        self._uow = uow
        self._batch = batch

    async def __call__(self, user_id: str, after: int | None) -> Changes:
        """With no cursor, nothing is sent: the answer is where to start from."""
        async with self._uow(user_id) as uow:
            if after is None:
                return Changes(
                    meetings=(), cursor=await uow.meetings.latest_change(user_id), more=False
                )
            rows = await uow.meetings.changed_since(user_id, after, self._batch + 1)
        page = rows[: self._batch]
        cursor = max((m.change_seq for m in page), default=after)
        return Changes(meetings=page, cursor=cursor, more=len(rows) > self._batch)
