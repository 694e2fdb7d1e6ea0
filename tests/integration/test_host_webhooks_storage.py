"""Host webhooks' storage (migrations/0009, adapters/postgres/host_webhooks.py; DR-32, DR-34) on a
real Postgres, as the runtime role: fan-out, claims with leases, back-off, disabled endpoints,
and a rolled-back change that never reaches an endpoint."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import psycopg_pool
import pytest

from adapters.postgres.host_webhooks import EndpointConfig, PostgresHostWebhooks
from tests.support.postgres import add_bare_connection, runtime_connection

Pool = psycopg_pool.AsyncConnectionPool[Any]
SET_TENANT = "SELECT set_config('app.user_id', %s, true)"


runtime = runtime_connection


def connect_user(url: str, user: str) -> str:
    """A connection row for `user` (one change: connection.updated)."""
    return add_bare_connection(url, user)


def add_meeting(url: str, user: str, cid: str, *, commit: bool = True) -> None:
    with runtime(url) as conn:
        conn.execute("BEGIN")
        conn.execute(SET_TENANT, (user,))
        conn.execute(
            "INSERT INTO meetings (user_id, connection_id, event_uri, status)"
            " VALUES (%s, %s, %s, 'active')",
            (user, cid, f"ev-{uuid.uuid4()}"),
        )
        conn.execute("COMMIT" if commit else "ROLLBACK")


def streams(url: str) -> dict[tuple[str, str], tuple[int, int]]:
    with psycopg.connect(url) as admin:
        rows = admin.execute(
            "SELECT endpoint, user_id, head_seq, sent_seq FROM host_webhook_streams"
        ).fetchall()
    return {(e, u): (h, s) for e, u, h, s in rows}


@pytest.fixture
async def store(pool: Pool) -> PostgresHostWebhooks:
    store = PostgresHostWebhooks(pool)
    await store.upsert_endpoints(
        [
            EndpointConfig(name="crm", url="http://127.0.0.1:9/a"),
            EndpointConfig(name="ops", url="http://127.0.0.1:9/b"),
        ]
    )
    return store


async def test_a_new_endpoint_starts_at_the_end_of_the_feed(database_url: str, pool: Pool) -> None:
    connect_user(database_url, "before")
    store = PostgresHostWebhooks(pool)
    await store.upsert_endpoints([EndpointConfig(name="late", url="http://127.0.0.1:9/")])
    assert await store.fan_out("late") == 0
    connect_user(database_url, "after")
    assert await store.fan_out("late") == 1
    assert streams(database_url) == {("late", "after"): (1, 0)}


async def test_a_user_known_before_a_new_endpoint_gets_only_what_came_after(
    database_url: str, pool: Pool
) -> None:
    """The endpoint starts at the end of the feed, and so does each user's stream in it: the
    older history of a user still in the log is not sent (`replay` is for that)."""
    cid = connect_user(database_url, "old-timer")
    add_meeting(database_url, "old-timer", cid)  # user_seq 2, before the endpoint existed
    store = PostgresHostWebhooks(pool)
    await store.upsert_endpoints([EndpointConfig(name="late", url="http://127.0.0.1:9/")])
    add_meeting(database_url, "old-timer", cid)  # user_seq 3

    assert await store.fan_out("late") == 1
    assert streams(database_url) == {("late", "old-timer"): (3, 2)}
    [claimed] = await store.claim("late", "w1", limit=10)
    assert [c.user_seq for c in await store.pending(claimed)] == [3]


async def test_fan_out_raises_head_seq_per_user_for_every_endpoint(
    database_url: str, store: PostgresHostWebhooks
) -> None:
    a = connect_user(database_url, "alice")
    b = connect_user(database_url, "bob")
    add_meeting(database_url, "alice", a)
    add_meeting(database_url, "alice", a)
    add_meeting(database_url, "bob", b)
    assert await store.fan_out("crm", limit=2) == 2  # in pages: the position moves on
    assert await store.fan_out("crm", limit=2) == 2
    assert await store.fan_out("crm", limit=2) == 1
    assert await store.fan_out("crm") == 0
    assert await store.fan_out("ops") == 5
    assert streams(database_url) == {
        ("crm", "alice"): (3, 0),
        ("crm", "bob"): (2, 0),
        ("ops", "alice"): (3, 0),
        ("ops", "bob"): (2, 0),
    }
    pending = await store.pending((await store.claim("crm", "w1", limit=10))[0])
    assert [c.user_seq for c in pending] in ([1, 2, 3], [1, 2])
    assert all(c.connection or c.meeting for c in pending)  # with the snapshots


async def test_a_rolled_back_change_is_never_fanned_out(
    database_url: str, store: PostgresHostWebhooks
) -> None:
    cid = connect_user(database_url, "alice")
    add_meeting(database_url, "alice", cid, commit=False)
    await store.fan_out("crm")
    add_meeting(database_url, "alice", cid, commit=False)
    add_meeting(database_url, "alice", cid)
    await store.fan_out("crm")
    assert streams(database_url)[("crm", "alice")] == (2, 0)
    [claimed] = await store.claim("crm", "w1", limit=5)
    pending = await store.pending(claimed)
    assert [(c.user_seq, c.event) for c in pending] == [
        (1, "connection.updated"),
        (2, "meeting.created"),
    ]


async def test_a_change_still_open_waits_below_the_horizon_then_is_fanned_out(
    database_url: str, store: PostgresHostWebhooks
) -> None:
    cid = connect_user(database_url, "alice")
    with runtime(database_url) as open_writer:
        open_writer.execute("BEGIN")
        open_writer.execute(SET_TENANT, ("alice",))
        open_writer.execute(
            "INSERT INTO meetings (user_id, connection_id, event_uri, status)"
            " VALUES (%s, %s, 'ev-open', 'active')",
            ("alice", cid),
        )
        connect_user(database_url, "bob")  # commits after the open one began
        await store.fan_out("crm")
        assert ("crm", "bob") not in streams(database_url)  # held back, not skipped
        open_writer.execute("COMMIT")
    await store.fan_out("crm")
    assert streams(database_url)[("crm", "alice")] == (2, 0)
    assert streams(database_url)[("crm", "bob")] == (1, 0)


async def test_claims_respect_leases_back_off_and_disabled_endpoints(
    database_url: str, store: PostgresHostWebhooks
) -> None:
    connect_user(database_url, "alice")
    connect_user(database_url, "bob")
    await store.fan_out("crm")
    first = await store.claim("crm", "w1", limit=1)
    assert len(first) == 1
    second = await store.claim("crm", "w2", limit=5)
    assert [s.user_id for s in second] != [first[0].user_id]
    assert len(second) == 1
    assert await store.claim("crm", "w3", limit=5) == []  # both leased

    # Only the owner of a live lease advances.
    assert not await store.advance(first[0], "w2", 1)
    assert await store.advance(first[0], "w1", 1)
    backed = await store.back_off(second[0], "w2", "503", jitter=1.0)
    assert backed is not None
    assert backed.attempts == 1
    assert not backed.parked
    assert backed.next_attempt_at > datetime.now(UTC) + timedelta(seconds=4)
    assert await store.settle("w1", [(first[0], 1)]) == {("crm", first[0].user_id)}
    assert await store.claim("crm", "w3", limit=5) == []  # one done, one backing off

    await store.retry("crm")
    assert [s.user_id for s in await store.claim("crm", "w3", limit=5)] == [second[0].user_id]

    connect_user(database_url, "carol")
    await store.fan_out("crm")
    await store.disable("crm", "410 Gone")
    assert await store.claim("crm", "w4", limit=5) == []
    assert await store.enable("crm")
    assert [s.user_id for s in await store.claim("crm", "w4", limit=5)] == ["carol"]


async def test_an_expired_lease_is_claimed_again_and_the_old_owner_cannot_advance(
    database_url: str, store: PostgresHostWebhooks
) -> None:
    connect_user(database_url, "alice")
    await store.fan_out("crm")
    [old] = await store.claim("crm", "w1", limit=1, lease_seconds=0.01)
    await asyncio.sleep(0.05)
    [new] = await store.claim("crm", "w2", limit=1)  # the lease has expired
    assert not await store.advance(old, "w1", 1)
    assert await store.advance(new, "w2", 1)


async def test_failing_too_long_parks_and_retry_unparks(
    database_url: str, store: PostgresHostWebhooks
) -> None:
    connect_user(database_url, "alice")
    await store.fan_out("crm")
    [claimed] = await store.claim("crm", "w1", limit=1)
    await store.back_off(claimed, "w1", "503", jitter=0.0, base=0.0)
    [claimed] = await store.claim("crm", "w1", limit=1)
    backed = await store.back_off(claimed, "w1", "503", jitter=0.0, base=0.0, park_after=0.0)
    assert backed is not None
    assert backed.parked
    assert await store.claim("crm", "w1", limit=1) == []
    [status] = [s for s in await store.status() if s.name == "crm"]
    assert (status.state, status.parked, status.backlog) == ("parked", 1, 1)
    assert status.oldest_undelivered is not None
    await store.retry()
    assert len(await store.claim("crm", "w1", limit=1)) == 1


async def test_replay_moves_streams_back_to_the_last_change_before_a_time(
    database_url: str, store: PostgresHostWebhooks
) -> None:
    cid = connect_user(database_url, "alice")
    with psycopg.connect(database_url) as admin:
        admin.execute("UPDATE change_log SET created_at = now() - interval '1 hour'")
    add_meeting(database_url, "alice", cid)
    await store.fan_out("crm")
    [claimed] = await store.claim("crm", "w1", limit=1)
    assert await store.advance(claimed, "w1", 2)
    assert streams(database_url)[("crm", "alice")] == (2, 2)
    since = datetime.now(UTC) - timedelta(minutes=5)
    assert await store.replay(since, endpoint="crm") == 1
    assert streams(database_url)[("crm", "alice")] == (2, 1)
    assert await store.replay(since - timedelta(hours=2), user_id="alice") == 1  # ops: not fanned
    assert streams(database_url)[("crm", "alice")] == (2, 0)
    assert await store.replay(since, user_id="nobody") == 0


async def test_a_claim_reads_each_streams_first_page_of_changes_with_their_subjects(
    database_url: str, store: PostgresHostWebhooks
) -> None:
    alice = connect_user(database_url, "alice")
    connect_user(database_url, "bob")
    for _ in range(3):
        add_meeting(database_url, "alice", alice)
    await store.fan_out("crm")
    claimed = {
        stream.user_id: (stream, changes)
        for stream, changes in await store.claim_with_pending("crm", "w1", limit=5, page=2)
    }
    assert set(claimed) == {"alice", "bob"}
    stream, changes = claimed["alice"]
    assert (stream.sent_seq, stream.head_seq) == (0, 4)
    assert [c.user_seq for c in changes] == [1, 2]  # one page, in order
    assert changes[0].connection is not None
    assert changes[0].connection.user_id == "alice"
    assert changes[1].meeting is not None
    assert [c.user_seq for c in claimed["bob"][1]] == [1]
    # Leased: a second dispatcher finds nothing to claim.
    assert await store.claim_with_pending("crm", "w2", limit=5) == []


async def test_settling_moves_and_releases_only_the_streams_still_leased_to_their_owner(
    database_url: str, store: PostgresHostWebhooks
) -> None:
    cids = {user: connect_user(database_url, user) for user in ("alice", "bob")}
    for user, cid in cids.items():
        add_meeting(database_url, user, cid)
    await store.fan_out("crm")
    claimed = {s.user_id: s for s, _ in await store.claim_with_pending("crm", "w1", limit=5)}
    with psycopg.connect(database_url) as admin:  # bob's lease runs out; w2 takes him over
        admin.execute(
            "UPDATE host_webhook_streams SET lease_until = now() - interval '1 second'"
            " WHERE user_id = 'bob'"
        )
    [taken] = await store.claim_with_pending("crm", "w2", limit=5)
    assert taken[0].user_id == "bob"

    settled = await store.settle("w1", [(claimed["alice"], 2), (claimed["bob"], 2)])

    assert settled == {("crm", "alice")}
    assert streams(database_url)[("crm", "alice")] == (2, 2)
    assert streams(database_url)[("crm", "bob")] == (2, 0)  # w2's, untouched
    # alice's lease ended with the settle: with a new change she is due again at once.
    add_meeting(database_url, "alice", cids["alice"])
    await store.fan_out("crm")
    [(again, changes)] = await store.claim_with_pending("crm", "w1", limit=5)
    assert (again.user_id, [c.user_seq for c in changes]) == ("alice", [3])
