"""The webhook path's statements stay within what psycopg caches the parsing of (issue 17)."""

from __future__ import annotations

import re

import pytest
from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH, MAX_CACHED_STATEMENT_PARAMS

from adapters.postgres.group_commit import (
    AS_BATCH_WRITER,
    BATCH_SETTINGS,
    LOCK_USERS,
    RING_WATCHED,
    SET_LOCK_TIMEOUT,
)
from adapters.postgres.meeting_writes import (
    APPLY_CHANGE,
    APPLY_PLAIN_CHANGE,
    INVITEE_UPSERT,
    MEETING_CTES,
    apply_parameters,
    compact,
)
from adapters.postgres.session import LOCK_TENANT, SET_TENANT
from adapters.postgres.webhook_events import (
    RECORD_AND_APPLY,
    RECORD_AND_APPLY_BATCH,
    RECORD_AND_APPLY_PLAIN,
    RECORD_EVENT,
    record_statement,
)
from adapters.postgres.webhook_routes import ROUTE_BY_TOKEN, ROUTE_BY_USER_URIS, ROUTES_BY_TOKENS
from domain.meetings import Meeting
from domain.ports import MeetingChange, Route
from tests.support.connections import T0

HOT = {
    "RECORD_AND_APPLY": RECORD_AND_APPLY,
    "RECORD_AND_APPLY_PLAIN": RECORD_AND_APPLY_PLAIN,
    "RECORD_EVENT": RECORD_EVENT,
    "APPLY_CHANGE": APPLY_CHANGE,
    "APPLY_PLAIN_CHANGE": APPLY_PLAIN_CHANGE,
    "ROUTE_BY_TOKEN": ROUTE_BY_TOKEN,
    "ROUTE_BY_USER_URIS": ROUTE_BY_USER_URIS,
    "SET_TENANT": SET_TENANT,
    "LOCK_TENANT": LOCK_TENANT,
    "SET_LOCK_TIMEOUT": SET_LOCK_TIMEOUT,
    "LOCK_USERS": LOCK_USERS,
    "ROUTES_BY_TOKENS": ROUTES_BY_TOKENS,
    "RECORD_AND_APPLY_BATCH": RECORD_AND_APPLY_BATCH,
    "AS_BATCH_WRITER": AS_BATCH_WRITER,
    "BATCH_SETTINGS": BATCH_SETTINGS,
    "RING_WATCHED": RING_WATCHED,
}
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


@pytest.mark.parametrize("name", HOT)
def test_each_hot_statement_is_short_enough_for_psycopgs_cache(name: str) -> None:
    """Longer, psycopg parses it again for every execution: a tenth of the service's CPU."""
    assert len(HOT[name].encode()) <= MAX_CACHED_STATEMENT_LENGTH


PLAIN = MeetingChange(meeting=Meeting(event_uri="https://api.calendly.test/e/1"))
LEGACY = MeetingChange(
    meeting=Meeting(event_uri="https://api.calendly.test/e/1"), needs_details=True
)
READ = MeetingChange(meeting=Meeting(event_uri="https://api.calendly.test/e/1"), details_for=T0)
DETAILS_ONLY = {"needs_details", "details_for", "details_error"}


@pytest.mark.parametrize(
    ("change", "statement"),
    [(PLAIN, RECORD_AND_APPLY_PLAIN), (LEGACY, RECORD_AND_APPLY), (READ, RECORD_AND_APPLY)],
    ids=["plain", "lacking its details", "a read of the details"],
)
def test_the_records_parameters_are_few_enough_for_psycopgs_cache(
    change: MeetingChange, statement: str
) -> None:
    route = Route(user_id="u", connection_id="c", calendly_user_uri="x")
    query, parameters = record_statement(
        event_id="e",
        event_type="invitee.created",
        payload=b"{}",
        connection=route,
        outcome="applied",
        reason=None,
        change=change,
    )
    assert query is statement
    assert len(parameters) <= MAX_CACHED_STATEMENT_PARAMS
    used = set(PLACEHOLDER.findall(query))
    assert used <= set(parameters)  # nothing missing
    # Nothing else, but what only the details' part reads (psycopg passes only what is used).
    assert set(parameters) - used == (
        DETAILS_ONLY if statement is RECORD_AND_APPLY_PLAIN else set()
    )
    assert set(apply_parameters(route, change)) <= set(parameters)


def test_compacting_keeps_every_word_and_placeholder() -> None:
    readable = "WITH serial AS (SELECT 1),\n" + MEETING_CTES + INVITEE_UPSERT
    words = [w for line in readable.splitlines() for w in line.split("--", 1)[0].split()]
    assert compact(readable).split(" ") == words
    assert "--" not in compact(readable)
