"""Deliveries seen over psycopg 3: recorded once each, for deduplication and looking back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec
import psycopg

from adapters.text import storable, storable_or_none
from domain.errors import RouteChanged
from domain.ports import (
    ConnectionRef,
    DeliveryRecord,
    MeetingChange,
    Route,
    WebhookEventLog,
    WebhookOutcome,
)

from .meeting_writes import (
    INVITEE_MERGE,
    INVITEE_UPSERT,
    MEETING_CTES,
    MEETING_MERGE,
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


# A batch's plain deliveries under routes (DR-61), one statement for many users: each user's at
# most once (`batch_rounds`), written exactly as RECORD_AND_APPLY_PLAIN writes one, as the
# batch writer role, which may touch the rows of the users in `app.batch_users` only
# (migrations/0019). The deliveries come as one JSON array (`batch_document`): Postgres parses
# it into rows in C, and psycopg adapts one parameter instead of thirty per delivery. The
# users' locks are held already (the batch takes them first, DR-48), and `numbered` gives each
# user's one meeting the user's next number. It answers each delivery's outcome in its order, as
# RECORD_AND_APPLY does: -1 when its route was out of date (nothing of it written), 1 when it
# was recorded and applied, 0 for a duplicate.
_BATCH_FIELDS = (
    "k int, event_id text, event_type text, payload jsonb, user_id text, connection_id uuid,"
    " outcome text, reason text, route_version text, event_uri text, name text,"
    " start_time timestamptz, end_time timestamptz, status text, location jsonb,"
    " cancellation jsonb, invitee_uri text, email text, i_name text, timezone text,"
    " i_status text, i_cancellation jsonb, rescheduled boolean, old_invitee_uri text,"
    " new_invitee_uri text"
)
RECORD_AND_APPLY_BATCH = compact(
    f"""
WITH d AS (SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb) AS d({_BATCH_FIELDS})),
routed AS (
    SELECT d.* FROM d
    WHERE EXISTS (SELECT FROM calendly_webhook_routes r
                  WHERE r.connection_id = d.connection_id
                    AND (d.route_version IS NULL OR r.xmin::text = d.route_version))
),
recorded AS (
    INSERT INTO calendly_webhook_events
        (event_id, event_type, payload, user_id, connection_id, outcome, reason)
    SELECT event_id, event_type, payload, user_id, connection_id, outcome, reason FROM routed
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
),
todo AS (SELECT routed.* FROM routed JOIN recorded USING (event_id)),
numbered AS (
    INSERT INTO meeting_change_users AS n (user_id, last_seq)
    SELECT user_id, 1 FROM todo
    ON CONFLICT (user_id) DO UPDATE SET last_seq = n.last_seq + 1
    RETURNING n.user_id, n.last_seq
),
meeting AS (
    INSERT INTO meetings AS t (
        user_id, connection_id, event_uri, name, start_time, end_time, status, location,
        cancellation, change_seq
    )
    SELECT todo.user_id, connection_id, event_uri, name, start_time, end_time, status,
           location, cancellation, numbered.last_seq
    FROM todo JOIN numbered USING (user_id)
    ON CONFLICT (connection_id, event_uri) DO UPDATE SET{MEETING_MERGE}
        change_seq = EXCLUDED.change_seq,
        updated_at = now()
    RETURNING id, connection_id, event_uri
),
invitee AS (
    INSERT INTO meeting_invitees AS i (
        user_id, connection_id, meeting_id, invitee_uri, email, name, timezone, status,
        cancellation, rescheduled, old_invitee_uri, new_invitee_uri
    )
    SELECT todo.user_id, todo.connection_id, meeting.id, invitee_uri, email, i_name, timezone,
           i_status, i_cancellation, rescheduled, old_invitee_uri, new_invitee_uri
    FROM todo JOIN meeting USING (connection_id, event_uri)
    WHERE invitee_uri IS NOT NULL
    ON CONFLICT (connection_id, invitee_uri) DO UPDATE SET{INVITEE_MERGE}
        updated_at = now()
)
SELECT string_agg(CASE WHEN NOT EXISTS (SELECT FROM routed WHERE routed.k = d.k) THEN -1
                       WHEN EXISTS (SELECT FROM todo WHERE todo.k = d.k) THEN 1
                       ELSE 0 END::text, ',' ORDER BY d.k) AS recorded
FROM d
"""  # noqa: S608 - constant SQL joined together; no input is ever formatted in
)


def batchable(delivery: DeliveryRecord) -> bool:
    """Whether `delivery` may be written by RECORD_AND_APPLY_BATCH: a plain change (the
    event's details with it, nothing to read back, DR-53) under a route, without a no-show
    flag or time (whose rule needs the flag's absence, which the batch's row cannot carry), and a
    body Postgres' jsonb holds. Anything else is written by its own statement, as before."""
    change = delivery.change
    return (
        delivery.route is not None
        and change is not None
        and change.no_show is None
        and change.no_show_at is None
        and is_plain(change)
        and _jsonb_text(delivery.payload) is not None
    )


def batch_rounds(deliveries: Sequence[DeliveryRecord]) -> list[list[int]]:
    """The batchable deliveries' places, in rounds: each round holds at most one delivery per
    user (the meeting's number and upserts touch a row once per statement) and per delivery
    id (a duplicate is judged by the row its twin inserted), in the order they came."""
    rounds: list[list[int]] = []
    seen: list[tuple[set[str], set[str]]] = []  # each round's users and delivery ids
    for place, delivery in enumerate(deliveries):
        assert delivery.route is not None  # batchable
        user, event_id = delivery.route.user_id, delivery.event_id
        at = next(
            (n for n, (users, ids) in enumerate(seen) if user not in users and event_id not in ids),
            len(rounds),
        )
        if at == len(rounds):
            rounds.append([])
            seen.append((set(), set()))
        rounds[at].append(place)
        seen[at][0].add(user)
        seen[at][1].add(event_id)
    return rounds


def batch_document(deliveries: Sequence[DeliveryRecord]) -> dict[str, str]:
    """RECORD_AND_APPLY_BATCH's parameter for batchable `deliveries` (one round)."""
    items: list[dict[str, Any]] = []
    for k, delivery in enumerate(deliveries):
        route, change = delivery.route, delivery.change
        assert route is not None  # batchable
        assert change is not None
        item = apply_parameters(route, change)
        for name in ("location", "cancellation", "i_cancellation"):
            value = item[name]
            item[name] = None if value is None else value.obj
        item.update(
            k=k,
            event_id=storable(delivery.event_id),
            event_type=storable(delivery.event_type),
            # Checked by `batchable`: JSON that jsonb holds, carried into the document as is.
            payload=msgspec.Raw(delivery.payload),
            outcome=delivery.outcome,
            reason=storable_or_none(delivery.reason),
            route_version=route.version,
        )
        items.append(item)
    return {"batch": _DOCUMENT.encode(items).decode()}


_DOCUMENT = msgspec.json.Encoder()


def batch_outcomes(
    answer: Answer, deliveries: Sequence[DeliveryRecord]
) -> list[bool | RouteChanged]:
    """What RECORD_AND_APPLY_BATCH answered for each of `deliveries`, as `recorded_by` reads
    one delivery's statement: recorded or a duplicate, or RouteChanged (nothing written)."""
    text = (answer.first or b"").decode()
    outcomes = [int(part) for part in text.split(",")] if text else []
    if len(outcomes) != len(deliveries):
        raise RuntimeError(f"a batch statement answered {len(outcomes)} of {len(deliveries)}")
    answers: list[bool | RouteChanged] = []
    for count, delivery in zip(outcomes, deliveries, strict=True):
        if count < 0:
            assert delivery.route is not None  # batchable
            answers.append(RouteChanged(delivery.route.connection_id))
        else:
            answers.append(count > 0)
    return answers


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
