"""Deliveries seen over psycopg 3: recorded once each, for deduplication and looking back."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
import psycopg

from adapters.text import storable, storable_or_none
from domain.ports import ConnectionRef, MeetingChange, WebhookEventLog, WebhookOutcome

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


# A delivery to apply, in one statement (issue 17): recorded, and only if that inserted a row
# (not a duplicate), the user's lock taken and the meeting and invitee merged exactly as
# APPLY_CHANGE does (the same CTEs). Answers whether it was recorded. RETURNING is fine here:
# the row is the tenant's own. Constant SQL joined together; no input is ever formatted in.
def _record_and_apply(meeting_ctes: str) -> str:
    return compact(
        """
WITH recorded AS (
    INSERT INTO calendly_webhook_events
        (event_id, event_type, payload, raw_payload, user_id, connection_id, outcome, reason)
    VALUES (%(event_id)s, %(event_type)s, %(payload)s::jsonb, %(raw)s, %(user_id)s,
            %(connection_id)s, %(outcome)s, %(reason)s)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING 1
),
serial AS (
    SELECT pg_advisory_xact_lock(hashtextextended('meetings:' || %(user_id)s, 0))
    FROM recorded
),
"""  # noqa: S608
        + meeting_ctes
        + """,
invitee AS (
"""
        + INVITEE_UPSERT
        + """
)
SELECT count(*) AS recorded FROM recorded
"""
    )


RECORD_AND_APPLY = _record_and_apply(MEETING_CTES)
# The same for a plain change (meeting_writes.is_plain): nearly every delivery.
RECORD_AND_APPLY_PLAIN = _record_and_apply(PLAIN_MEETING_CTES)


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
        return await recorded(query, cursor)


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
    """The one statement that records a delivery (RECORD_EVENT) or records and applies it
    (RECORD_AND_APPLY), with its parameters; `recorded` reads its answer."""
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
    if change is not None and connection is not None:
        query = RECORD_AND_APPLY_PLAIN if is_plain(change) else RECORD_AND_APPLY
        return query, {**apply_parameters(connection, change), **parameters}
    return RECORD_EVENT, parameters


def recorded_by(query: str, answer: Answer) -> bool:
    """Whether `record_statement`'s statement, run by `one_write.run_transaction` (which gave
    `answer`), recorded a new delivery."""
    if query is RECORD_AND_APPLY or query is RECORD_AND_APPLY_PLAIN:
        return answer.first is not None and int(answer.first) > 0
    return answer.rowcount == 1


async def recorded(query: str, cursor: psycopg.AsyncCursor[Any]) -> bool:
    """Whether `record_statement`'s statement, run on `cursor` (dict rows), recorded a new
    delivery."""
    if query is RECORD_AND_APPLY or query is RECORD_AND_APPLY_PLAIN:
        row = await cursor.fetchone()
        return bool(row and row["recorded"])
    return cursor.rowcount == 1
