"""The change feed (migrations/0008, adapters/postgres/changes.py; DR-31) on a real Postgres.

The property: however writers interleave (transactions opened, written, committed or rolled
back in any order, several open at once) and whenever a reader pages through the feed, a reader
that resumes from each position it was given ends up with every committed change exactly once,
and nothing of a rolled-back one; each user's changes are numbered 1..n without a gap.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.postgres.changes import FIRST_CHANGES, NEXT_CHANGES, PostgresChangeFeed
from adapters.postgres.directory import HOST_SCOPE, READ_ONLY
from domain.changes import ChangePosition
from tests.support.postgres import RUNTIME_ROLE

USERS = ("u0", "u1", "u2")
SET_TENANT = "SELECT set_config('app.user_id', %s, true)"
ADD_MEETING = (
    "INSERT INTO meetings (user_id, connection_id, event_uri, status) VALUES (%s, %s, %s, 'active')"
)
CANCEL_MEETING = (
    "UPDATE meetings SET status = 'canceled' WHERE id = "
    "(SELECT id FROM meetings WHERE user_id = %s AND status = 'active' LIMIT 1)"
)


def runtime(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(f"SET ROLE {RUNTIME_ROLE}")
    return conn


@pytest.fixture
def feed_db(database_url: str) -> tuple[str, dict[str, str]]:
    """The database, with one connection per user (meetings need one)."""
    connections = {user: str(uuid.uuid4()) for user in USERS}
    with runtime(database_url) as conn:
        for user, cid in connections.items():
            with conn.transaction():
                conn.execute(SET_TENANT, (user,))
                conn.execute(
                    "INSERT INTO calendar_connections (id, user_id, status, webhook_token)"
                    " VALUES (%s, %s, 'disconnected', %s)",
                    (cid, user, f"token-{user}"),
                )
    return database_url, connections


@dataclass
class Reader:
    """A host back end paging through the feed, each page in its own transaction."""

    conn: psycopg.Connection[Any]
    after: tuple[int, int] | None = None
    # (id, user, user_seq, kind) of each change read, in order.
    seen: list[tuple[int, str, int, str]] = field(default_factory=list)

    def page(self, limit: int) -> int:
        with self.conn.transaction():
            self.conn.execute(READ_ONLY)
            self.conn.execute(HOST_SCOPE)
            if self.after is None:
                rows = self.conn.execute(FIRST_CHANGES, {"limit": limit}).fetchall()
            else:
                xid, last = self.after
                rows = self.conn.execute(
                    NEXT_CHANGES, {"xid": str(xid), "id": last, "limit": limit}
                ).fetchall()
        for row_id, xid, user_id, user_seq, kind, *_ in rows:
            self.seen.append((row_id, user_id, user_seq, kind))
            self.after = (int(xid), row_id)
        return len(rows)


def catch_up(reader: Reader, url: str, seconds: float = 15.0) -> None:
    """Read until the reader has reached the end of the log. The horizon is the cluster's: a
    transaction another test or database holds open delays the last changes (the feed waits,
    it does not skip), so an empty page alone does not mean the end."""
    with psycopg.connect(url, autocommit=True) as admin:
        [(last,)] = admin.execute("SELECT coalesce(max(id), 0) FROM change_log").fetchall()
    deadline = time.monotonic() + seconds
    while True:
        if reader.page(limit=3):
            continue
        if (reader.seen and max(r[0] for r in reader.seen) >= last) or last == 0:
            return
        assert time.monotonic() < deadline, "the feed did not reach the end of the log"
        time.sleep(0.05)


Step = tuple[str, int, int]  # (what, writer, user or page size)
steps = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "cancel", "commit", "rollback", "read"]),
        st.integers(0, 3),
        st.integers(0, len(USERS) - 1),
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schedule=steps)
def test_every_committed_change_is_read_once_whatever_the_interleaving(
    feed_db: tuple[str, dict[str, str]], schedule: list[Step]
) -> None:
    url, connections = feed_db
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("DELETE FROM change_log WHERE kind = 'meeting'")
        admin.execute("DELETE FROM meeting_invitees")
        admin.execute("DELETE FROM meetings")
        # Numbers go on from the last one given (0011): start each example from what is left.
        admin.execute(
            "UPDATE change_log_users u SET last_seq ="
            " (SELECT max(user_seq) FROM change_log c WHERE c.user_id = u.user_id)"
        )
    writers: dict[int, psycopg.Connection[Any]] = {}
    owners: dict[int, set[str]] = {}  # each writer's users: their advisory locks are held
    reader = Reader(runtime(url))
    try:
        for what, writer, number in schedule:
            user = USERS[number]
            if what == "read":
                reader.page(limit=1 + number)
            elif what in ("add", "cancel"):
                if any(user in users for w, users in owners.items() if w != writer):
                    continue  # another open writer holds that user's lock: it would wait
                if writer not in writers:
                    writers[writer] = runtime(url)
                    writers[writer].execute("BEGIN")
                    owners[writer] = set()
                conn = writers[writer]
                conn.execute(SET_TENANT, (user,))
                if what == "add":
                    conn.execute(ADD_MEETING, (user, connections[user], f"ev-{uuid.uuid4()}"))
                else:
                    conn.execute(CANCEL_MEETING, (user,))
                owners[writer].add(user)
            elif writer in writers:
                writers[writer].execute("COMMIT" if what == "commit" else "ROLLBACK")
                writers.pop(writer).close()
                owners.pop(writer)
        for conn in writers.values():
            conn.execute("COMMIT")
        catch_up(reader, url)
    finally:
        for conn in writers.values():
            conn.close()
        reader.conn.close()

    with psycopg.connect(url, autocommit=True) as admin:
        committed = admin.execute(
            "SELECT id, user_id, user_seq FROM change_log ORDER BY id"
        ).fetchall()
    read_ids = [row_id for row_id, *_ in reader.seen]
    assert len(read_ids) == len(set(read_ids)), "a change was read twice"
    assert sorted(read_ids) == [row_id for row_id, _, _ in committed], "a change was missed"
    for user in USERS:
        numbers = sorted(seq for _, owner, seq in committed if owner == user)
        assert numbers == list(range(1, len(numbers) + 1)), (user, numbers)


def test_an_open_transaction_holds_the_feed_back_and_nothing_is_skipped(
    feed_db: tuple[str, dict[str, str]],
) -> None:
    """The case the horizon exists for: an older transaction commits after a newer one."""
    url, connections = feed_db
    older, newer = runtime(url), runtime(url)
    reader = Reader(runtime(url))
    try:
        for conn, user in ((older, "u0"), (newer, "u1")):
            conn.execute("BEGIN")
            conn.execute(SET_TENANT, (user,))
            conn.execute(ADD_MEETING, (user, connections[user], f"ev-{uuid.uuid4()}"))
        newer.execute("COMMIT")
        while reader.page(limit=10):
            pass
        before = {owner for _, owner, _, kind in reader.seen if kind == "meeting"}
        assert before == set()  # the newer change waits for the older transaction
        older.execute("COMMIT")
        catch_up(reader, url)
    finally:
        for conn in (older, newer, reader.conn):
            conn.close()
    meetings_read = [owner for _, owner, _, kind in reader.seen if kind == "meeting"]
    assert sorted(meetings_read) == ["u0", "u1"]


def test_a_tenant_sees_only_its_own_changes_and_cannot_read_the_host_view(
    feed_db: tuple[str, dict[str, str]],
) -> None:
    url, _ = feed_db
    with runtime(url) as conn, conn.transaction():
        conn.execute(SET_TENANT, ("u0",))
        owners = {row[0] for row in conn.execute("SELECT user_id FROM change_log").fetchall()}
        conn.execute(HOST_SCOPE)  # the host scope means nothing inside a tenant
        still = {row[0] for row in conn.execute("SELECT user_id FROM change_log").fetchall()}
    assert owners == {"u0"}
    assert still == {"u0"}


def test_the_feed_reads_with_snapshots_of_what_changed(
    feed_db: tuple[str, dict[str, str]],
) -> None:
    url, connections = feed_db
    with runtime(url) as conn, conn.transaction():
        conn.execute(SET_TENANT, ("u2",))
        conn.execute(ADD_MEETING, ("u2", connections["u2"], "ev-snapshot"))
        conn.execute(CANCEL_MEETING, ("u2",))

    async def read() -> list[Any]:
        from adapters.postgres.pool import make_pool

        pool = make_pool(url, runtime_role=RUNTIME_ROLE, min_size=1, max_size=2)
        await pool.open(wait=True)
        try:
            feed = PostgresChangeFeed(pool)
            first = list(await feed.read(None, 2))
            rest = list(await feed.read(first[-1].position, 100))
            return first + rest
        finally:
            await pool.close()

    changes = asyncio.run(read())
    meeting = [c for c in changes if c.kind == "meeting"]
    # One row per subject and transaction, with the strongest event of it.
    assert [c.event for c in meeting] == ["meeting.canceled"]
    assert meeting[0].meeting is not None
    assert meeting[0].meeting.meeting.event_uri == "ev-snapshot"
    assert meeting[0].meeting.meeting.status == "canceled"  # as it is now
    connection = [c for c in changes if c.kind == "connection" and c.user_id == "u2"]
    assert connection
    assert connection[0].connection is not None
    assert connection[0].connection.user_id == "u2"
    assert all(a.position < b.position for a, b in itertools.pairwise(changes))
    assert isinstance(changes[0].position, ChangePosition)


def test_the_feed_orders_transaction_ids_as_numbers_not_as_text(database_url: str) -> None:
    # Transaction ids grow through every number of digits: 9 < 10 < 100 must hold in the
    # feed's order and in its cursors (text would put "10" < "100" < "9", and a cursor taken
    # at "9" would skip the others for ever). Rows written as the owner, with ids below any
    # live transaction's (the feed shows only ended ones).
    subject = str(uuid.uuid4())
    with psycopg.connect(database_url, autocommit=True) as admin:
        (current,) = admin.execute("SELECT pg_current_xact_id()::text::bigint").fetchone() or (0,)
        assert current > 100
        for seq, xid in enumerate((100, 9, 10), start=1):
            admin.execute(
                "INSERT INTO change_log (xid, user_id, user_seq, kind, subject_id, event)"
                " VALUES (%s::text::xid8, 'u9', %s, 'meeting', %s, 'meeting.created')",
                (str(xid), seq, subject),
            )

    async def read_one_by_one() -> list[int]:
        from adapters.postgres.pool import make_pool

        pool = make_pool(database_url, runtime_role=RUNTIME_ROLE, min_size=1, max_size=1)
        await pool.open(wait=True)
        try:
            feed, seen, after = PostgresChangeFeed(pool), [], None
            for _ in range(5):
                page = list(await feed.read(after, 1))
                if not page:
                    break
                seen.append(page[0].position.xid)
                after = page[0].position
            return seen
        finally:
            await pool.close()

    assert asyncio.run(read_one_by_one()) == [9, 10, 100]
