"""Migration 0017 folds the change log's four trigger functions into one (DR-53): the same writes
log the same changes, row for row, before and after it. Migration 0018 rings a meeting's doorbell
only in the webhook path's batches, which ring for their users themselves (DR-57): the same
change log, and the same doorbells as before it for every other writer."""

# The writes are SQL built from this file's own constants (no input): S608 does not apply.
# ruff: noqa: S608
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from tests.support.connections import owner_sql
from tests.support.postgres import PgCluster, database_before

ONE_TRIGGER = "0017_one_change_trigger.sql"
WATCHERS = "0018_doorbells_when_watched.sql"
C1 = "00000000-0000-0000-0000-0000000000c1"
C2 = "00000000-0000-0000-0000-0000000000c2"
M1 = "00000000-0000-0000-0000-0000000000a1"
M2 = "00000000-0000-0000-0000-0000000000a2"
SECRETS = "access_token_enc = '\\x01', refresh_token_enc = '\\x02'"
MEETING = (
    "INSERT INTO meetings (id, user_id, connection_id, event_uri, status, change_seq)"
    " VALUES ('{id}', 'ada', '" + C1 + "', 'https://e/{id}', 'active', {seq})"
)
INVITEE = (
    "INSERT INTO meeting_invitees (user_id, connection_id, meeting_id, invitee_uri, status,"
    " rescheduled) VALUES ('ada', '" + C1 + "', '{meeting}', 'https://i/{uri}', 'active', {r})"
)

# Each item is one transaction; together they take every branch of every table's rules, the
# folding of one subject's events within a transaction, and writes that log nothing.
TRANSACTIONS: list[list[str]] = [
    [
        "INSERT INTO calendar_connections (id, user_id, status, webhook_token, calendly_user_uri,"
        " access_token_enc, refresh_token_enc, connected_at)"
        f" VALUES ('{C1}', 'ada', 'active', 't1', 'https://u/1', '\\x01', '\\x02', now())"
    ],
    [f"UPDATE calendar_connections SET provider_account_email = 'a@x' WHERE id = '{C1}'"],
    [f"UPDATE calendar_connections SET webhook_status = 'disabled' WHERE id = '{C1}'"],
    [f"UPDATE calendar_connections SET webhook_status = 'unavailable_plan' WHERE id = '{C1}'"],
    [f"UPDATE calendar_connections SET status = 'needs_reauth' WHERE id = '{C1}'"],
    [f"UPDATE calendar_connections SET status = 'active' WHERE id = '{C1}'"],
    [f"UPDATE calendar_connections SET calendly_user_uri = 'https://u/2' WHERE id = '{C1}'"],
    [f"UPDATE calendar_connections SET token_expires_at = now() WHERE id = '{C1}'"],  # nothing
    [f"UPDATE calendar_connections SET calendly_user_name = 'Ada' WHERE id = '{C1}'"],
    [
        "INSERT INTO calendar_connections (id, user_id, status, webhook_token)"
        f" VALUES ('{C2}', 'bob', 'disconnected', 't2')"
    ],
    [f"UPDATE calendar_connections SET status = 'active', {SECRETS} WHERE id = '{C2}'"],
    [
        "UPDATE calendar_connections SET status = 'disconnected', access_token_enc = NULL,"
        f" refresh_token_enc = NULL WHERE id = '{C2}'"
    ],
    # A booking: the meeting's "created" outweighs its invitee's "updated".
    [MEETING.format(id=M1, seq=1), INVITEE.format(meeting=M1, uri="1", r="false")],
    [f"UPDATE meetings SET name = 'Call' WHERE id = '{M1}'"],
    [f"UPDATE meetings SET updated_at = now() WHERE id = '{M1}'"],  # nothing
    [f"UPDATE meeting_invitees SET no_show = true WHERE meeting_id = '{M1}'"],
    [f"UPDATE meeting_invitees SET no_show = false WHERE meeting_id = '{M1}'"],
    [f"UPDATE meeting_invitees SET email = 'g@x' WHERE meeting_id = '{M1}'"],
    [f"UPDATE meeting_invitees SET timezone = 'UTC' WHERE meeting_id = '{M1}'"],  # nothing
    # A reschedule: "rescheduled" outweighs "canceled", whichever comes first.
    [
        f"UPDATE meetings SET status = 'canceled' WHERE id = '{M1}'",
        f"UPDATE meeting_invitees SET rescheduled = true WHERE meeting_id = '{M1}'",
    ],
    [MEETING.format(id=M2, seq=2)],
    [INVITEE.format(meeting=M2, uri="2", r="true")],
    # "canceled" outweighs the "updated" logged before it in the same transaction.
    [
        f"UPDATE meetings SET name = 'Later' WHERE id = '{M2}'",
        f"UPDATE meetings SET status = 'canceled' WHERE id = '{M2}'",
    ],
    [
        f"UPDATE meeting_invitees SET status = 'canceled' WHERE meeting_id = '{M2}'",
        f"UPDATE meetings SET start_time = now() WHERE id = '{M2}'",
    ],
]


@pytest.fixture
async def before_url(pg_cluster: PgCluster, tmp_path: Path) -> AsyncIterator[str]:
    async for url in database_before(pg_cluster, tmp_path, ONE_TRIGGER):
        yield url


@pytest.fixture
async def after_url(pg_cluster: PgCluster, tmp_path: Path) -> AsyncIterator[str]:
    async for url in database_before(pg_cluster, tmp_path, WATCHERS):
        yield url


@pytest.fixture
async def head_url(pg_cluster: PgCluster, tmp_path: Path) -> AsyncIterator[str]:
    async for url in database_before(pg_cluster, tmp_path, None):
        yield url


def logged(url: str, batch: bool = False) -> list[tuple[object, ...]]:
    """TRANSACTIONS run as the owner, each as a batch of the webhook path would if `batch`
    (0018's `app.doorbells`); the change log they left, and the doorbells rung."""
    with psycopg.connect(url, autocommit=True) as listener, psycopg.connect(url) as conn:
        listener.execute("LISTEN calendly_changes")
        for statements in TRANSACTIONS:
            if batch:
                conn.execute("SELECT set_config('app.doorbells', 'batch', true)")
            for statement in statements:
                conn.execute(statement.encode())
            conn.commit()
        rows = conn.execute(
            "SELECT user_id, user_seq, kind, subject_id::text, event FROM change_log"
            " ORDER BY xid, id"
        ).fetchall()
        rings = [n.payload for n in listener.notifies(timeout=0.5)]
    return [*rows, ("doorbells", *rings)]


async def test_the_same_writes_log_the_same_changes_before_and_after_0017(
    before_url: str, after_url: str
) -> None:
    one_function = "SELECT count(*) FROM pg_proc WHERE proname = 'log_row_change'"
    assert (owner_sql(before_url, one_function), owner_sql(after_url, one_function)) == (
        [(0,)],
        [(1,)],
    )
    before, after = logged(before_url), logged(after_url)

    assert after == before
    events = [row[4] for row in after[:-1]]
    # Every branch was taken (the list is the rules' own order, 0008).
    assert set(events) == {
        "connection.connected",
        "connection.updated",
        "connection.webhooks_disabled",
        "connection.webhooks_unavailable_plan",
        "connection.needs_reauth",
        "connection.recovered",
        "connection.reconnected",
        "connection.disconnected",
        "meeting.created",
        "meeting.updated",
        "invitee.no_show_set",
        "invitee.no_show_cleared",
        "meeting.rescheduled",
        "meeting.canceled",
    }
    # A meeting's doorbell: one per transaction that wrote a meeting (Postgres folds the same
    # notification within a transaction), none for one that wrote only an invitee.
    rings = [ring for ring in after[-1][1:] if str(ring).startswith("meetings:")]
    assert rings == ["meetings:ada"] * 7


@pytest.mark.parametrize("batch", [False, True])
async def test_after_0018_only_the_webhook_paths_batches_leave_the_meetings_doorbell_to_themselves(
    after_url: str, head_url: str, batch: bool
) -> None:
    before, after = logged(after_url), logged(head_url, batch)
    assert after[:-1] == before[:-1]  # the change log, row for row
    before_rings, after_rings = before[-1][1:], after[-1][1:]
    meetings = [ring for ring in before_rings if str(ring).startswith("meetings:")]
    assert meetings  # else this test could not fail
    if batch:  # the batch rings for whoever listens (tests/integration/test_live_watchers.py)
        assert after_rings == tuple(r for r in before_rings if r not in meetings)
    else:  # every other writer: as before
        assert after_rings == before_rings
