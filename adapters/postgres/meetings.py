"""The tenant's meetings over psycopg 3: the domain's merge rules as one SQL statement."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import msgspec
from psycopg.types.json import Jsonb

from adapters.text import storable, storable_json, storable_or_none
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

from .pool import out_of_range, within_range
from .session import ReadOnly, Session

# The merge rules of domain.meetings, done by Postgres in one statement so that concurrent
# deliveries for one meeting cannot lose each other's changes. Contract tests run the same
# sequences against this and against the in-memory fake that calls the domain's rules.
#
# The advisory lock per user makes one user's changes commit in the order of their change_seq
# values, so a reader that has seen change N can never later find a committed change below N
# (live updates resume from such a cursor). Selecting FROM it orders the lock before the insert.
# change_seq is the user's own counter: a BEFORE INSERT trigger (migrations/0005) sets the
# proposed row's to the user's highest + 1, and EXCLUDED carries it into the update.
# The meeting and the maintenance request, as CTEs after a `serial` CTE that holds the lock
# (APPLY_CHANGE below; the webhook's one statement in webhook_events.RECORD_AND_APPLY).
MEETING_CTES = """
meeting AS (
    INSERT INTO meetings AS t (
        user_id, connection_id, event_uri, name, start_time, end_time, status, location,
        cancellation, details_requested_at
    )
    SELECT %(user_id)s, %(connection_id)s, %(event_uri)s, %(name)s, %(start_time)s,
           %(end_time)s, %(status)s, %(location)s, %(cancellation)s,
           CASE WHEN %(needs_details)s THEN now() END
    FROM serial
    ON CONFLICT (connection_id, event_uri) DO UPDATE SET
        name = coalesce(EXCLUDED.name, t.name),
        start_time = coalesce(EXCLUDED.start_time, t.start_time),
        end_time = coalesce(EXCLUDED.end_time, t.end_time),
        status = CASE WHEN 'canceled' IN (t.status, EXCLUDED.status)
                      THEN 'canceled' ELSE 'active' END,
        location = coalesce(EXCLUDED.location, t.location),
        cancellation = coalesce(t.cancellation, EXCLUDED.cancellation),
        -- A delivery without the event's details asks for them (again: the event may have
        -- changed); a read of the event meets the request it was made for, unless a later
        -- delivery renewed it meanwhile (DR-47).
        details_requested_at = CASE
            WHEN %(needs_details)s THEN now()
            WHEN t.details_requested_at = %(details_for)s::timestamptz THEN NULL
            ELSE t.details_requested_at END,
        details_error = CASE
            WHEN %(needs_details)s THEN NULL
            WHEN t.details_requested_at = %(details_for)s::timestamptz THEN %(details_error)s
            ELSE t.details_error END,
        change_seq = EXCLUDED.change_seq,
        updated_at = now()
    RETURNING id
),
-- ... and tells the worker so. After the meeting (FROM meeting): the user's lock comes first,
-- as everywhere else, so two deliveries of one user cannot wait for each other.
wanted AS (
    UPDATE connection_maintenance SET enrich_due = now()
    FROM meeting
    WHERE %(needs_details)s AND connection_id = %(connection_id)s
)
"""
# The invitee, after the meeting (FROM meeting): a statement, or the last CTE.
INVITEE_UPSERT = """
INSERT INTO meeting_invitees AS i (
    user_id, connection_id, meeting_id, invitee_uri, email, name, timezone, status,
    cancellation, rescheduled, old_invitee_uri, new_invitee_uri, no_show, no_show_changed_at
)
SELECT %(user_id)s, %(connection_id)s, meeting.id, %(invitee_uri)s, %(email)s, %(i_name)s,
       %(timezone)s, %(i_status)s, %(i_cancellation)s, %(rescheduled)s, %(old_invitee_uri)s,
       %(new_invitee_uri)s, coalesce(%(no_show)s, false), %(no_show_at)s
FROM meeting
WHERE %(invitee_uri)s::text IS NOT NULL
ON CONFLICT (connection_id, invitee_uri) DO UPDATE SET
    email = coalesce(EXCLUDED.email, i.email),
    name = coalesce(EXCLUDED.name, i.name),
    timezone = coalesce(EXCLUDED.timezone, i.timezone),
    status = CASE WHEN 'canceled' IN (i.status, EXCLUDED.status)
                  THEN 'canceled' ELSE 'active' END,
    cancellation = coalesce(i.cancellation, EXCLUDED.cancellation),
    rescheduled = i.rescheduled OR EXCLUDED.rescheduled,
    old_invitee_uri = coalesce(i.old_invitee_uri, EXCLUDED.old_invitee_uri),
    new_invitee_uri = coalesce(i.new_invitee_uri, EXCLUDED.new_invitee_uri),
    no_show = CASE WHEN %(no_show)s::boolean IS NOT NULL
                        AND (i.no_show_changed_at IS NULL
                             OR %(no_show_at)s::timestamptz > i.no_show_changed_at)
                   THEN %(no_show)s::boolean ELSE i.no_show END,
    no_show_changed_at = CASE WHEN %(no_show)s::boolean IS NOT NULL
                                   AND (i.no_show_changed_at IS NULL
                                        OR %(no_show_at)s::timestamptz > i.no_show_changed_at)
                              THEN %(no_show_at)s::timestamptz ELSE i.no_show_changed_at END,
    updated_at = now()
"""
APPLY_CHANGE = (
    """
WITH serial AS (
    SELECT pg_advisory_xact_lock(hashtextextended('meetings:' || %(user_id)s, 0))
),
"""
    + MEETING_CTES
    + INVITEE_UPSERT
)

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
ORDER BY details_requested_at
LIMIT %(limit)s
"""
LATEST_CHANGE = """
SELECT coalesce(max(change_seq), 0) AS latest FROM meetings WHERE user_id = %(user_id)s
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


def _json(value: object) -> Jsonb | None:
    """A jsonb parameter Postgres accepts, whatever strings `value` holds (see `storable`)."""
    return None if value is None else Jsonb(storable_json(msgspec.to_builtins(value)))


def apply_parameters(connection: ConnectionRef, change: MeetingChange) -> dict[str, Any]:
    """APPLY_CHANGE's parameters (and MEETING_CTES' and INVITEE_UPSERT's) for `change`.

    Every source's meetings (webhooks, sync, reads of events) are written through these, so
    this is where their text is made storable: a NUL or a lone surrogate would fail the
    statement, and then every retry of it (RELIABILITY row 31).
    """
    m, i = change.meeting, change.invitee
    return {
        "user_id": connection.user_id,
        "connection_id": connection.id,
        "event_uri": storable(m.event_uri),
        "name": storable_or_none(m.name),
        "start_time": m.start_time,
        "end_time": m.end_time,
        "status": m.status.value,
        "location": _json(m.location),
        "cancellation": _json(m.cancellation),
        "invitee_uri": storable(i.invitee_uri) if i else None,
        "email": storable_or_none(i.email) if i else None,
        "i_name": storable_or_none(i.name) if i else None,
        "timezone": storable_or_none(i.timezone) if i else None,
        "i_status": i.status.value if i else None,
        "i_cancellation": _json(i.cancellation) if i else None,
        "rescheduled": i.rescheduled if i else False,
        "old_invitee_uri": storable_or_none(i.old_invitee_uri) if i else None,
        "new_invitee_uri": storable_or_none(i.new_invitee_uri) if i else None,
        "no_show": change.no_show,
        "no_show_at": change.no_show_at,
        "needs_details": change.needs_details,
        "details_for": change.details_for,
        "details_error": storable_or_none(change.details_error),
    }


class PostgresMeetingRepository(MeetingRepository):
    READ_ONLY: ClassVar[ReadOnly] = ReadOnly(
        reads=frozenset({LIST_MEETINGS, CHANGED_MEETINGS, LATEST_CHANGE, WANTING_DETAILS})
    )

    def __init__(self, session: Session) -> None:
        self._session = session

    async def apply(self, connection: ConnectionRef, change: MeetingChange) -> None:
        await self._session.execute(APPLY_CHANGE, apply_parameters(connection, change))

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
