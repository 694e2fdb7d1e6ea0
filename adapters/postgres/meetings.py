"""The tenant's meetings over psycopg 3: the domain's merge rules as one SQL statement."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import msgspec

from adapters.text import storable
from domain.meetings import Cancellation, Invitee, Meeting, MeetingStatus
from domain.ports import (
    ConnectionRef,
    DetailsWanted,
    MeetingChange,
    MeetingDetails,
    MeetingQuery,
    MeetingRepository,
    MeetingView,
)

from .meeting_writes import APPLY_CHANGE, APPLY_PLAIN_CHANGE, apply_parameters, is_plain
from .pool import out_of_range, within_range
from .session import ReadOnly, Session

MEETING_COLUMNS = """
SELECT m.id::text AS id, m.event_uri, m.name, m.start_time, m.end_time, m.status, m.location,
       m.cancellation, m.updated_at, m.change_seq,
       CASE WHEN m.details_requested_at IS NOT NULL THEN 'pending'
            WHEN m.details_error IS NOT NULL THEN 'unavailable'
            ELSE 'complete' END AS details,
       m.details_error,
       coalesce(
           (SELECT json_agg(json_build_object(
                       'invitee_uri', i.invitee_uri, 'email', i.email, 'name', i.name,
                       'timezone', i.timezone, 'status', i.status,
                       'cancellation', i.cancellation, 'rescheduled', i.rescheduled,
                       'old_invitee_uri', i.old_invitee_uri,
                       'new_invitee_uri', i.new_invitee_uri, 'no_show', i.no_show,
                       'no_show_changed_at', i.no_show_changed_at)
                   ORDER BY i.created_at, i.invitee_uri)
            FROM meeting_invitees i WHERE i.meeting_id = m.id),
           '[]'::json) AS invitees
FROM meetings m
"""
LIST_MEETINGS = (
    MEETING_COLUMNS
    + """
WHERE m.user_id = %(user_id)s
  AND (%(status)s::text IS NULL OR m.status = %(status)s::text)
  AND (%(starts_after)s::timestamptz IS NULL OR m.start_time >= %(starts_after)s::timestamptz)
  AND (%(starts_before)s::timestamptz IS NULL OR m.start_time < %(starts_before)s::timestamptz)
  AND (%(after_id)s::text IS NULL
       OR (coalesce(m.start_time, 'infinity'::timestamptz), m.id)
          > (coalesce(%(after_start)s::timestamptz, 'infinity'::timestamptz),
             %(after_id)s::uuid))
ORDER BY coalesce(m.start_time, 'infinity'::timestamptz), m.id
LIMIT %(limit)s
"""
)
CHANGED_MEETINGS = (
    MEETING_COLUMNS
    + """
WHERE m.user_id = %(user_id)s AND m.change_seq > %(after)s
ORDER BY m.change_seq
LIMIT %(limit)s
"""
)
WANTING_DETAILS = """
SELECT event_uri, details_requested_at AS requested_at FROM meetings
WHERE connection_id = %(connection_id)s AND details_requested_at IS NOT NULL
  AND (details_retry_at IS NULL OR details_retry_at <= now())
ORDER BY details_requested_at
LIMIT %(limit)s
"""
# When the connection's next wanted read is due (now or a retry's time), or NULL: none.
NEXT_DETAILS_DUE = """
SELECT min(coalesce(details_retry_at, details_requested_at)) AS due FROM meetings
WHERE connection_id = %(connection_id)s AND details_requested_at IS NOT NULL
"""
# A read that failed for this one meeting: its error shown, tried again after a back-off that
# doubles from `base` up to `cap`; unless a delivery renewed the request meanwhile (then at
# once). The database's clock, as for every other due time.
POSTPONE_DETAILS = """
UPDATE meetings SET
    details_error = %(error)s,
    details_failures = details_failures + 1,
    details_retry_at = now() + least(%(cap)s::interval,
                                     %(base)s::interval * 2 ^ least(details_failures, 16))
WHERE connection_id = %(connection_id)s AND event_uri = %(event_uri)s
  AND details_requested_at = %(requested_at)s
"""
# The last number given (migrations/0016): one indexed row, where the highest number stored
# read every meeting of the user whenever the statistics said few (DR-52).
LATEST_CHANGE = """
SELECT coalesce(
    (SELECT last_seq FROM meeting_change_users WHERE user_id = %(user_id)s), 0
) AS latest
"""


# Reading never fails on what is stored (RELIABILITY row 34): timestamptz columns come clamped
# by the pool's loader (pool.clamp_times); times inside JSON (the invitees' no-show time, as
# json_build_object writes it, and jsonb cancellations) and jsonb shapes are read leniently here.
class InviteeRow(msgspec.Struct, kw_only=True):
    invitee_uri: str
    email: str | None = None
    name: str | None = None
    timezone: str | None = None
    status: MeetingStatus
    cancellation: Any = None
    rescheduled: bool = False
    old_invitee_uri: str | None = None
    new_invitee_uri: str | None = None
    no_show: bool = False
    no_show_changed_at: str | None = None


class MeetingRow(msgspec.Struct, kw_only=True):
    id: str
    event_uri: str
    name: str | None
    start_time: datetime | None
    end_time: datetime | None
    status: MeetingStatus
    location: Any
    cancellation: Any
    updated_at: datetime
    change_seq: int
    invitees: list[InviteeRow]
    details: MeetingDetails = "complete"
    details_error: str | None = None


def _moment(value: object) -> datetime | None:
    """A time read from JSON: past datetime's range, the nearest bound; not a time, None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return out_of_range(value)
    return within_range(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _cancellation(value: object) -> Cancellation | None:
    if not isinstance(value, dict):
        return None

    def text(key: str) -> str | None:
        found = value.get(key)
        return found if isinstance(found, str) else None

    return Cancellation(
        canceled_by=text("canceled_by"),
        reason=text("reason"),
        canceler_type=text("canceler_type"),
        canceled_at=_moment(value.get("canceled_at")),
    )


def _invitee(row: InviteeRow, event_uri: str) -> Invitee:
    return Invitee(
        invitee_uri=row.invitee_uri,
        event_uri=event_uri,
        email=row.email,
        name=row.name,
        timezone=row.timezone,
        status=row.status,
        cancellation=_cancellation(row.cancellation),
        rescheduled=row.rescheduled,
        old_invitee_uri=row.old_invitee_uri,
        new_invitee_uri=row.new_invitee_uri,
        no_show=row.no_show,
        no_show_changed_at=_moment(row.no_show_changed_at),
    )


class PostgresMeetingRepository(MeetingRepository):
    READ_ONLY: ClassVar[ReadOnly] = ReadOnly(
        reads=frozenset(
            {LIST_MEETINGS, CHANGED_MEETINGS, LATEST_CHANGE, WANTING_DETAILS, NEXT_DETAILS_DUE}
        )
    )

    def __init__(self, session: Session) -> None:
        self._session = session

    async def apply(self, connection: ConnectionRef, change: MeetingChange) -> None:
        statement = APPLY_PLAIN_CHANGE if is_plain(change) else APPLY_CHANGE
        await self._session.execute(statement, apply_parameters(connection, change))

    async def list(self, user_id: str, query: MeetingQuery) -> Sequence[MeetingView]:
        after_start, after_id = query.after if query.after is not None else (None, None)
        cursor = await self._session.execute(
            LIST_MEETINGS,
            {
                "user_id": user_id,
                "status": query.status.value if query.status else None,
                "starts_after": query.starts_after,
                "starts_before": query.starts_before,
                "after_start": after_start,
                "after_id": after_id,
                "limit": query.limit,
            },
        )
        return self.views(await cursor.fetchall())

    async def changed_since(self, user_id: str, after: int, limit: int) -> Sequence[MeetingView]:
        cursor = await self._session.execute(
            CHANGED_MEETINGS, {"user_id": user_id, "after": after, "limit": limit}
        )
        return self.views(await cursor.fetchall())

    async def wanting_details(self, connection_id: str, limit: int) -> Sequence[DetailsWanted]:
        cursor = await self._session.execute(
            WANTING_DETAILS, {"connection_id": connection_id, "limit": limit}
        )
        return [msgspec.convert(row, DetailsWanted) for row in await cursor.fetchall()]

    async def next_details_due(self, connection_id: str) -> datetime | None:
        cursor = await self._session.execute(NEXT_DETAILS_DUE, {"connection_id": connection_id})
        row = await cursor.fetchone()
        return row["due"] if row else None

    async def postpone_details(
        self,
        connection_id: str,
        request: DetailsWanted,
        error: str,
        *,
        base: timedelta,
        cap: timedelta,
    ) -> None:
        await self._session.execute(
            POSTPONE_DETAILS,
            {
                "connection_id": connection_id,
                "event_uri": request.event_uri,
                "requested_at": request.requested_at,
                "error": storable(error),
                "base": base,
                "cap": cap,
            },
        )

    async def latest_change(self, user_id: str) -> int:
        cursor = await self._session.execute(LATEST_CHANGE, {"user_id": user_id})
        row = await cursor.fetchone()
        return int(row["latest"]) if row else 0

    @staticmethod
    def views(rows: Sequence[dict[str, Any]]) -> Sequence[MeetingView]:
        views = []
        for raw in rows:
            row = msgspec.convert(raw, MeetingRow, strict=False)
            meeting = Meeting(
                event_uri=row.event_uri,
                name=row.name,
                start_time=row.start_time,
                end_time=row.end_time,
                status=row.status,
                location=row.location if isinstance(row.location, dict) else None,
                cancellation=_cancellation(row.cancellation),
            )
            invitees = tuple(_invitee(i, row.event_uri) for i in row.invitees)
            views.append(
                MeetingView(
                    id=row.id,
                    meeting=meeting,
                    invitees=invitees,
                    updated_at=row.updated_at,
                    change_seq=row.change_seq,
                    details=row.details,
                    details_error=row.details_error,
                )
            )
        return views
