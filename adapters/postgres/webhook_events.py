"""Deliveries seen over psycopg 3: recorded once each, for deduplication and looking back."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
import psycopg

from adapters.text import storable, storable_or_none
from domain.errors import RouteChanged
from domain.ports import (
    ConnectionRef,
    MeetingChange,
    Route,
    WebhookEventLog,
    WebhookOutcome,
)

from .meeting_writes import (
    INVITEE_UPSERT,
    MEETING_CTES,
    PLAIN_MEETING_CTES,
    apply_parameters,
    compact,
    is_plain,
)
from .one_write import Answer
from .session import ReadOnly, Session

RECORD_EVENT = """
INSERT INTO calendly_webhook_events
    (event_id, event_type, payload, raw_payload, user_id, connection_id, outcome, reason)
VALUES (%(event_id)s, %(event_type)s, %(payload)s::jsonb, %(raw)s, %(user_id)s,
        %(connection_id)s, %(outcome)s, %(reason)s)
ON CONFLICT (event_id) DO NOTHING
"""
# No RETURNING: a row nobody may read (an unrouted delivery) could not be returned under RLS.

# A delivery judged by a route (a connection's) is written only while that route is still the
# connection's: the row the route was read from, unchanged (`Route.version`, its xmin; with no
# version, any route of the connection). The route may have been kept from an earlier lookup
# (DR-60). Every writer of a connection takes its user's lock before writing (DR-33), as the
# webhook path does before this statement, so what this reads cannot change before the commit.
ROUTE_IS_CURRENT = """
routed AS (
    SELECT FROM calendly_webhook_routes
    WHERE connection_id = %(connection_id)s
      AND (%(route_version)s::text IS NULL OR xmin::text = %(route_version)s::text)
)"""
# What the routed statements answer: -1 when the route was out of date (nothing written),
# else whether a row was recorded (0: a duplicate).
_ANSWER = """
SELECT CASE WHEN EXISTS (SELECT FROM routed) THEN (SELECT count(*) FROM recorded) ELSE -1 END
       AS recorded
"""
_INSERT_ROUTED = """
recorded AS (
    INSERT INTO calendly_webhook_events
        (event_id, event_type, payload, raw_payload, user_id, connection_id, outcome, reason)
    SELECT %(event_id)s, %(event_type)s, %(payload)s::jsonb, %(raw)s, %(user_id)s,
           %(connection_id)s, %(outcome)s, %(reason)s
    FROM routed
    ON CONFLICT (event_id) DO NOTHING
    RETURNING 1
)"""
# A delivery recorded under its route but not applied (ignored, or unusable for it).
RECORD_ROUTED_EVENT = compact("WITH" + ROUTE_IS_CURRENT + "," + _INSERT_ROUTED + _ANSWER)


# A delivery to apply, in one statement (issue 17): recorded, and only if that inserted a row
# (not a duplicate) under a current route, the user's lock taken and the meeting and invitee
# merged exactly as APPLY_CHANGE does (the same CTEs). Answers as RECORD_ROUTED_EVENT does.
# RETURNING is fine here: the row is the tenant's own. Constant SQL joined together; no input
# is ever formatted in.
def _record_and_apply(meeting_ctes: str) -> str:
    return compact(
        "WITH"  # noqa: S608 - constant SQL joined together
        + ROUTE_IS_CURRENT
        + ","
        + _INSERT_ROUTED
        + """,
serial AS (
    SELECT pg_advisory_xact_lock(hashtextextended('meetings:' || %(user_id)s, 0))
    FROM recorded
),
"""
        + meeting_ctes
        + """,
invitee AS (
"""
        + INVITEE_UPSERT
        + """
)"""
        + _ANSWER
    )


RECORD_AND_APPLY = _record_and_apply(MEETING_CTES)
# The same for a plain change (meeting_writes.is_plain): nearly every delivery.
RECORD_AND_APPLY_PLAIN = _record_and_apply(PLAIN_MEETING_CTES)
_ROUTED = (RECORD_ROUTED_EVENT, RECORD_AND_APPLY, RECORD_AND_APPLY_PLAIN)


def _jsonb_text(body: bytes) -> str | None:
    """The body as text Postgres' jsonb accepts, or None (then it is kept as raw bytes)."""
    if b"\\u0000" in body:
        return None  # valid JSON, but jsonb refuses NUL characters
    try:
        msgspec.json.decode(body)
        return body.decode("utf-8")
    # RecursionError: nested deeper than msgspec may follow (RELIABILITY row 32).
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


class PostgresWebhookEventLog(WebhookEventLog):
    # A duplicate delivery inserts no row: it wrote nothing.
    READ_ONLY: ClassVar[ReadOnly] = ReadOnly(nothing_without_rows=frozenset({RECORD_EVENT}))

    def __init__(self, session: Session) -> None:
        self._session = session

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
        query, parameters = record_statement(
            event_id=event_id,
            event_type=event_type,
            payload=payload,
            connection=connection,
            outcome=outcome,
            reason=reason,
            change=change,
        )
        cursor = await self._session.execute(query, parameters)
        return await recorded(query, cursor, connection)


def record_statement(
    *,
    event_id: str,
    event_type: str,
    payload: bytes,
    connection: ConnectionRef | None,
    outcome: WebhookOutcome,
    reason: str | None,
    change: MeetingChange | None,
) -> tuple[str, dict[str, Any]]:
    """The one statement that records a delivery (RECORD_EVENT; RECORD_ROUTED_EVENT under a
    route) or records and applies it (RECORD_AND_APPLY), with its parameters; `recorded` and
    `recorded_by` read its answer."""
    text = _jsonb_text(payload)
    parameters = {
        # Made of the delivery's own text (its URIs, a decoder's message): storable.
        "event_id": storable(event_id),
        "event_type": storable(event_type),
        "payload": text,
        "raw": None if text is not None else payload,
        "user_id": connection.user_id if connection else None,
        "connection_id": connection.id if connection else None,
        "outcome": outcome,
        "reason": storable_or_none(reason),
    }
    if connection is None:
        return RECORD_EVENT, parameters
    # A route read from the store has a version; a connection named otherwise (or a route
    # built by hand) is checked only for having a route at all.
    parameters["route_version"] = connection.version if isinstance(connection, Route) else None
    if change is not None:
        query = RECORD_AND_APPLY_PLAIN if is_plain(change) else RECORD_AND_APPLY
        return query, {**apply_parameters(connection, change), **parameters}
    return RECORD_ROUTED_EVENT, parameters


def recorded_by(query: str, answer: Answer, connection: ConnectionRef | None) -> bool:
    """Whether `record_statement`'s statement, run by `one_write.run_transaction` (which gave
    `answer`), recorded a new delivery; RouteChanged if it wrote nothing, its route being out
    of date."""
    if query in _ROUTED:
        return _judged(answer.first, connection)
    return answer.rowcount == 1


async def recorded(
    query: str, cursor: psycopg.AsyncCursor[Any], connection: ConnectionRef | None
) -> bool:
    """As `recorded_by`, for the statement run on `cursor` (dict rows)."""
    if query in _ROUTED:
        row = await cursor.fetchone()
        return _judged(None if row is None else row["recorded"], connection)
    return cursor.rowcount == 1


def _judged(answer: bytes | int | None, connection: ConnectionRef | None) -> bool:
    if answer is None:
        raise RuntimeError("a routed record statement answered no row")
    count = int(answer)
    if count < 0:
        raise RouteChanged(connection.id if connection is not None else "?")
    return count > 0
