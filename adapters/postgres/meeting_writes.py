"""How a change is written into a tenant's meetings: the domain's merge rules as SQL, shared by
the meetings repository (APPLY_CHANGE) and the webhook's one statement (webhook_events)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from psycopg.types.json import Jsonb

from adapters.text import storable, storable_json, storable_or_none
from domain.ports import ConnectionRef, MeetingChange

# The merge rules of domain.meetings, done by Postgres in one statement so that concurrent
# deliveries for one meeting cannot lose each other's changes. Contract tests run the same
# sequences against this and against the in-memory fake that calls the domain's rules.
#
# The advisory lock per user makes one user's changes commit in the order of their change_seq
# values, so a reader that has seen change N can never later find a committed change below N
# (live updates resume from such a cursor). Selecting FROM it orders the lock before the insert.
# change_seq is the user's own counter, kept in meeting_change_users (migrations/0016, DR-52):
# the `numbered` CTE takes the user's next number (its upsert locks the user's row and reads its
# latest version, whatever the statement's snapshot), and EXCLUDED carries it into the update.
# Every upsert of a meeting (a delivery, a sync, a read of its details) takes a number, so a
# page's cursor sees each of them (a failed read's error, POSTPONE_DETAILS, takes none).
# The meeting and the maintenance request, as CTEs after a `serial` CTE that holds the lock
# (APPLY_CHANGE below; the webhook's one statement in webhook_events.RECORD_AND_APPLY).
# A change that neither lacks the event's details nor carries a read of them (`plain`, nearly
# every delivery) leaves the details' four columns as they are and asks the worker for
# nothing: its statement leaves out what would compute exactly that. Postgres builds every
# expression and table write of a statement each time it runs it, used or not: the details'
# part was about a sixth of a delivery's statement (DR-53).
# What only a change that is not plain needs (DR-47): a new meeting's request time, an existing
# one's details' columns, and the worker told (`wanted`).
_REQUESTED = " CASE WHEN %(needs_details)s THEN now() END,"
_DETAILS_UPDATES = """
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
        details_failures = CASE
            WHEN %(needs_details)s OR t.details_requested_at = %(details_for)s::timestamptz
                THEN 0
            ELSE t.details_failures END,
        details_retry_at = CASE
            WHEN %(needs_details)s OR t.details_requested_at = %(details_for)s::timestamptz
                THEN NULL
            ELSE t.details_retry_at END,"""
_WANTED = """,
-- ... and tells the worker so. After the meeting (FROM meeting): the user's lock comes first,
-- as everywhere else, so two deliveries of one user cannot wait for each other.
wanted AS (
    UPDATE connection_maintenance SET enrich_due = now()
    FROM meeting
    WHERE %(needs_details)s AND connection_id = %(connection_id)s
)"""


MEETING_MERGE = """
        name = coalesce(EXCLUDED.name, t.name),
        start_time = coalesce(EXCLUDED.start_time, t.start_time),
        end_time = coalesce(EXCLUDED.end_time, t.end_time),
        status = CASE WHEN 'canceled' IN (t.status, EXCLUDED.status)
                      THEN 'canceled' ELSE 'active' END,
        location = coalesce(EXCLUDED.location, t.location),
        cancellation = coalesce(t.cancellation, EXCLUDED.cancellation),"""


def _meeting_ctes(*, plain: bool) -> str:
    def full(text: str) -> str:
        """`text` in the full statement; nothing in the plain one."""
        return "" if plain else text

    return f"""
numbered AS (
    INSERT INTO meeting_change_users AS n (user_id, last_seq)
    SELECT %(user_id)s, 1 FROM serial
    ON CONFLICT (user_id) DO UPDATE SET last_seq = n.last_seq + 1
    RETURNING n.last_seq
),
meeting AS (
    INSERT INTO meetings AS t (
        user_id, connection_id, event_uri, name, start_time, end_time, status, location,
        cancellation,{full(" details_requested_at,")} change_seq
    )
    SELECT %(user_id)s, %(connection_id)s, %(event_uri)s, %(name)s, %(start_time)s,
           %(end_time)s, %(status)s, %(location)s, %(cancellation)s,{full(_REQUESTED)}
           numbered.last_seq
    FROM numbered
    ON CONFLICT (connection_id, event_uri) DO UPDATE SET{MEETING_MERGE}{full(_DETAILS_UPDATES)}
        change_seq = EXCLUDED.change_seq,
        updated_at = now()
    RETURNING id
){full(_WANTED)}
"""  # noqa: S608 - constant SQL joined together; no input is ever formatted in


MEETING_CTES = _meeting_ctes(plain=False)
PLAIN_MEETING_CTES = _meeting_ctes(plain=True)


def is_plain(change: MeetingChange) -> bool:
    """Whether `change` may be written by the statements made of PLAIN_MEETING_CTES."""
    return not change.needs_details and change.details_for is None


# How a meeting's row (`t`) and an invitee's (`i`) take what a change says (EXCLUDED): the
# domain's merge rules (domain.meetings), shared by every statement that writes them
# (the webhook's batch statement too, webhook_events.RECORD_AND_APPLY_BATCH).
INVITEE_MERGE = """
    email = coalesce(EXCLUDED.email, i.email),
    name = coalesce(EXCLUDED.name, i.name),
    timezone = coalesce(EXCLUDED.timezone, i.timezone),
    status = CASE WHEN 'canceled' IN (i.status, EXCLUDED.status)
                  THEN 'canceled' ELSE 'active' END,
    cancellation = coalesce(i.cancellation, EXCLUDED.cancellation),
    rescheduled = i.rescheduled OR EXCLUDED.rescheduled,
    old_invitee_uri = coalesce(i.old_invitee_uri, EXCLUDED.old_invitee_uri),
    new_invitee_uri = coalesce(i.new_invitee_uri, EXCLUDED.new_invitee_uri),"""

# The invitee, after the meeting (FROM meeting): a statement, or the last CTE.
INVITEE_UPSERT = (
    """
INSERT INTO meeting_invitees AS i (
    user_id, connection_id, meeting_id, invitee_uri, email, name, timezone, status,
    cancellation, rescheduled, old_invitee_uri, new_invitee_uri, no_show, no_show_changed_at
)
SELECT %(user_id)s, %(connection_id)s, meeting.id, %(invitee_uri)s, %(email)s, %(i_name)s,
       %(timezone)s, %(i_status)s, %(i_cancellation)s, %(rescheduled)s, %(old_invitee_uri)s,
       %(new_invitee_uri)s, coalesce(%(no_show)s, false), %(no_show_at)s
FROM meeting
WHERE %(invitee_uri)s::text IS NOT NULL
ON CONFLICT (connection_id, invitee_uri) DO UPDATE SET"""
    + INVITEE_MERGE
    + """
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
)


def compact(statement: str) -> str:
    """`statement` without its comments and with single spaces: the same SQL, sent shorter.

    psycopg caches how it parses a statement's placeholders only for statements of up to 4 KiB
    (`MAX_CACHED_STATEMENT_LENGTH`): the webhook's one statement was longer, and parsing it
    again for every delivery cost an eighth of the service's CPU (issue 17). For the constant
    SQL of this package only: it holds no string literal with `--` or runs of spaces.
    """
    lines = (line.split("--", 1)[0] for line in statement.splitlines())
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


def _apply_change(meeting_ctes: str) -> str:
    return compact(
        """
WITH serial AS (
    SELECT pg_advisory_xact_lock(hashtextextended('meetings:' || %(user_id)s, 0))
),
"""
        + meeting_ctes
        + INVITEE_UPSERT
    )


APPLY_CHANGE = _apply_change(MEETING_CTES)
APPLY_PLAIN_CHANGE = _apply_change(PLAIN_MEETING_CTES)


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
