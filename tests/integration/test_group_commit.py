"""Group commit on Postgres (DR-48): concurrent deliveries share a transaction, yet each caller
hears exactly what one transaction per delivery would have told it, and nothing of one delivery
can fail, hold up or reorder another user's."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import msgspec
import psycopg
import psycopg_pool
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.crypto import AesGcmTokenCipher
from adapters.postgres import group_commit
from adapters.postgres.group_commit import KeptRoutes, PostgresDeliveryLedger
from adapters.postgres.pool import make_pool
from adapters.postgres.unit_of_work import unit_of_work_factory
from adapters.postgres.webhook_events import RECORD_AND_APPLY_BATCH
from domain.errors import RouteChanged, StorageUnavailable
from domain.meetings import Cancellation, Meeting, MeetingStatus
from domain.ports import DeliveryRecord, MeetingChange, Route
from domain.secret import Secret
from domain.usecases.handle_webhook_event import UnitOfWorkLedger
from tests.support.connections import EV, T0, add, cid, connection, owner_sql
from tests.support.ledger_records import USERS, connected, delivery, route_of
from tests.support.postgres import RUNTIME_ROLE
from tests.support.statements import sent_statements

Pool = psycopg_pool.AsyncConnectionPool[Any]
PER_USER_TABLES = "meeting_invitees, meetings, calendly_webhook_events, change_log"


def stored(url: str) -> dict[str, Any]:
    """What the deliveries left: meetings, invitees and recorded deliveries, as the owner."""
    return {
        "meetings": sorted(owner_sql(url, "SELECT user_id, event_uri, name, status FROM meetings")),
        "invitees": sorted(
            owner_sql(url, "SELECT user_id, invitee_uri, email, status FROM meeting_invitees")
        ),
        "events": sorted(
            owner_sql(
                url,
                "SELECT event_id, event_type, user_id, outcome, reason"
                " FROM calendly_webhook_events",
            )
        ),
        # Each user's meetings in the order of their change numbers (DR-52).
        "numbers": owner_sql(
            url, "SELECT user_id, event_uri FROM meetings ORDER BY user_id, change_seq"
        ),
    }


# `cipher` and `pool` (4 connections, as the runtime role) come from tests/integration/conftest.py.


@pytest.fixture
async def ledger(pool: Pool, cipher: AesGcmTokenCipher) -> PostgresDeliveryLedger:
    uow = unit_of_work_factory(pool, cipher)
    await connected(uow)
    return PostgresDeliveryLedger(pool, cipher, UnitOfWorkLedger(uow), max_running=1)


@pytest.fixture
def reference_url(pg_cluster: Any) -> Iterator[str]:
    """A second database, for the same deliveries written one transaction each."""
    name = pg_cluster.new_database()
    try:
        yield pg_cluster.url_for(name)
    finally:
        pg_cluster.drop(name)


deliveries = st.lists(
    st.builds(
        delivery,
        st.sampled_from((*USERS, None)),
        st.integers(0, 3),
        st.integers(0, 2),
        cancel=st.booleans(),
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(batch=deliveries)
async def test_a_batch_leaves_and_answers_what_one_transaction_each_would(
    batch: list[DeliveryRecord],
    ledger: PostgresDeliveryLedger,
    database_url: str,
    reference_url: str,
    cipher: AesGcmTokenCipher,
) -> None:
    """Any mix, in any order, with copies (duplicates within one batch too), of several users
    and of none: the same rows, and per delivery the same answer, as one by one."""
    for url in (database_url, reference_url):
        owner_sql(url, f"TRUNCATE {PER_USER_TABLES}")
    reference_pool = make_pool(reference_url, runtime_role=RUNTIME_ROLE, min_size=1, max_size=2)
    await reference_pool.open(wait=True)
    try:
        one_by_one = unit_of_work_factory(reference_pool, cipher)
        if not owner_sql(reference_url, "SELECT 1 FROM calendar_connections"):
            await connected(one_by_one)
        expected = [await UnitOfWorkLedger(one_by_one).record(d) for d in batch]
    finally:
        await reference_pool.close()
    before = ledger.records.batches
    answers = await asyncio.gather(*(ledger.record(d) for d in batch))
    assert list(answers) == expected
    assert stored(database_url) == stored(reference_url)
    # They shared one transaction: the first caller's run took everyone who had arrived.
    assert ledger.records.batches - before == 1
    assert ledger.fallbacks == 0


async def test_concurrent_routes_are_found_together(ledger: PostgresDeliveryLedger) -> None:
    lookups = [
        ledger.route(webhook_token="token-ada1"),
        ledger.route(calendly_user_uris=["https://api.calendly.test/users/nobody"]),
        ledger.route(
            calendly_user_uris=[
                "https://api.calendly.test/users/nobody",
                "https://api.calendly.test/users/u2",
            ]
        ),
        ledger.route(webhook_token="token-nobody"),
        ledger.route(),  # nothing to look by: no lookup at all
    ]
    found = await asyncio.gather(*lookups)
    assert [r.user_id if r else None for r in found] == ["ada", None, "bob", None, None]
    assert found[0] is not None
    assert found[0].signing_key is not None
    assert found[0].signing_key.reveal() == "key-1"  # unsealed, as the repository does
    assert ledger.routes.batches == 1  # four lookups, one round trip


async def test_a_delivery_that_fails_fails_alone(ledger: PostgresDeliveryLedger) -> None:
    """A delivery whose write fails takes its batch down; the others are written again, one
    transaction each, and only its own caller hears the error."""
    broken = Route(user_id="ada", connection_id="not-a-uuid", calendly_user_uri="x")
    good = [delivery("ada", 1, 1), delivery("bob", 1, 1), delivery(None, 1, 1)]
    bad = msgspec.structs.replace(delivery("ada", 2, 1), route=broken)
    answers = await asyncio.gather(
        *(ledger.record(d) for d in [good[0], bad, *good[1:]]), return_exceptions=True
    )
    assert answers[0] is True
    assert answers[2:] == [True, True]
    assert isinstance(answers[1], psycopg.errors.InvalidTextRepresentation)
    assert ledger.fallbacks == 1


async def test_a_delivery_whose_route_is_gone_writes_nothing_and_fails_nobody_else(
    ledger: PostgresDeliveryLedger,
) -> None:
    """A route that is no longer its connection's (DR-60) makes its delivery write nothing and
    answer RouteChanged; the batch's other deliveries commit, in the same batch."""
    ghost = Route(user_id="ada", connection_id=cid(99), calendly_user_uri="x")  # no such row
    good = [delivery("ada", 1, 1), delivery("bob", 1, 1), delivery(None, 1, 1)]
    bad = msgspec.structs.replace(delivery("ada", 2, 1), route=ghost)
    answers = await asyncio.gather(
        *(ledger.record(d) for d in [good[0], bad, *good[1:]]), return_exceptions=True
    )
    assert answers[0] is True
    assert answers[2:] == [True, True]
    assert isinstance(answers[1], RouteChanged)
    assert answers[1].connection_id == cid(99)
    assert ledger.fallbacks == 0


async def test_a_lock_held_long_elsewhere_holds_up_only_its_own_user(
    ledger: PostgresDeliveryLedger, database_url: str
) -> None:
    """A transaction holding bob's lock across a slow call (a token refresh, DR-33) makes the
    batch with bob's delivery give up waiting: ada's is written and answered meanwhile."""
    holder = await psycopg.AsyncConnection.connect(database_url)
    try:
        await holder.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('meetings:' || %s, 0))", ("bob",)
        )
        cys = asyncio.create_task(ledger.record(delivery("cy", 1, 1)))
        bobs = asyncio.create_task(ledger.record(delivery("bob", 1, 1)))
        adas = asyncio.create_task(ledger.record(delivery("ada", 1, 1)))
        assert await asyncio.wait_for(adas, timeout=30) is True
        assert await cys is True
        assert not bobs.done()  # still waiting for bob's lock, alone
        await holder.commit()  # the slow call is over
        assert await asyncio.wait_for(bobs, timeout=30) is True
    finally:
        await holder.close()
    assert ledger.fallbacks == 1


async def test_each_users_changes_keep_their_order_in_the_feed(
    pool: Pool, cipher: AesGcmTokenCipher, database_url: str
) -> None:
    """A batch takes every user's lock before its first write: it gets its transaction id only
    then, so a user's changes sit in the feed in their user_seq order (DR-33) even when the
    batch waited for one of its users behind a transaction that had already written."""
    uow = unit_of_work_factory(pool, cipher)
    await connected(uow)
    ledger = PostgresDeliveryLedger(
        pool, cipher, UnitOfWorkLedger(uow), max_running=1, lock_timeout_ms=30_000
    )
    locked = asyncio.Event()
    finish = asyncio.Event()

    async def bobs_transaction() -> None:
        """Takes bob's lock, and only later writes (gets its transaction id) and commits."""
        async with uow("bob") as unit:
            await unit.lock("meetings:bob")  # the key LOCK_TENANT takes for bob
            locked.set()
            await finish.wait()
            await unit.meetings.apply(
                route_of("bob"), MeetingChange(meeting=Meeting(event_uri=EV + "slow"))
            )
            await unit.commit()

    other = asyncio.create_task(bobs_transaction())
    await locked.wait()
    batch = asyncio.gather(
        ledger.record(delivery("ada", 1, 1)), ledger.record(delivery("bob", 1, 1))
    )
    # The batch is waiting for bob's lock: had it written ada's delivery first, it would have
    # its transaction id already, below the one bob's transaction is about to get.
    for _ in range(3_000):
        if owner_sql(
            database_url, "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ):
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the batch never waited for bob's lock")
    finish.set()
    await other
    assert list(await batch) == [True, True]
    rows = owner_sql(
        database_url,
        "SELECT user_seq FROM change_log WHERE user_id = 'bob' ORDER BY xid, id",
    )
    seqs = [seq for (seq,) in rows]
    assert seqs[0] == 1
    assert len(seqs) > 1
    assert seqs == sorted(seqs)
    # The live cursors too: the batch numbered bob's meeting after the one committed while it
    # waited (DR-52).
    numbers = owner_sql(
        database_url,
        "SELECT event_uri, change_seq FROM meetings WHERE user_id = 'bob' ORDER BY change_seq",
    )
    assert [n for _, n in numbers] == [1, 2]
    assert numbers[0][0] == EV + "slow"


async def test_an_unreachable_database_answers_every_caller_storage_unavailable(
    cipher: AesGcmTokenCipher,
) -> None:
    pool = make_pool("postgresql://nobody@127.0.0.1:9/none", runtime_role=None, min_size=0)
    await pool.open(wait=False)
    try:
        ledger = PostgresDeliveryLedger(
            pool, cipher, UnitOfWorkLedger(unit_of_work_factory(pool, cipher))
        )
        answers = await asyncio.gather(
            ledger.record(delivery("ada", 1, 1)),
            ledger.route(webhook_token="token-ada1"),
            return_exceptions=True,
        )
        assert all(isinstance(a, StorageUnavailable) for a in answers), answers
    finally:
        await pool.close()


async def test_a_route_whose_key_cannot_be_unsealed_fails_alone(pool: Pool) -> None:
    """One connection's signing key sealed under a key the service no longer holds: its own
    deliveries fail, the others looked up with it do not."""
    kept, retired = os.urandom(32), os.urandom(32)
    holds_both = AesGcmTokenCipher({"k1": kept, "k2": retired}, "k2")
    holds_one = AesGcmTokenCipher({"k1": kept}, "k1")
    await add(unit_of_work_factory(pool, holds_one), connection("ada", 1, cid(1)))
    await add(unit_of_work_factory(pool, holds_both), connection("bob", 2, cid(2)))
    ledger = PostgresDeliveryLedger(
        pool, holds_one, UnitOfWorkLedger(unit_of_work_factory(pool, holds_one)), max_running=1
    )
    found = await asyncio.gather(
        ledger.route(webhook_token="token-ada1"),
        ledger.route(webhook_token="token-bob2"),
        return_exceptions=True,
    )
    assert isinstance(found[0], Route)
    assert found[0].user_id == "ada"
    assert isinstance(found[1], Exception)
    assert ledger.routes.batches == 1


async def test_a_lookup_postgres_refuses_fails_alone(ledger: PostgresDeliveryLedger) -> None:
    found = await asyncio.gather(
        ledger.route(webhook_token="token-ada1"),
        ledger.route(calendly_user_uris=["https://api.calendly.test/users/\x00"]),
        return_exceptions=True,
    )
    assert isinstance(found[0], Route)
    assert found[0].user_id == "ada"
    assert isinstance(found[1], psycopg.Error)


def events_of(url: str, user: str) -> list[str]:
    rows = owner_sql(url, "SELECT event_id, user_id FROM calendly_webhook_events")
    return sorted(event for event, owner in rows if owner == user)


async def test_a_route_found_by_token_is_kept_and_checked_when_written(
    ledger: PostgresDeliveryLedger, database_url: str
) -> None:
    """DR-60: the second lookup of a token asks nothing of Postgres; once the connection's
    route row is replaced (here its key written again, as a new subscription does), a delivery
    judged by the kept route writes nothing and answers RouteChanged, and the next lookup
    reads the route afresh."""
    first = await ledger.route(webhook_token="token-ada1")
    assert first is not None
    assert first.version
    assert not first.kept
    lookups = ledger.routes.batches
    kept = await ledger.route(webhook_token="token-ada1")
    assert kept is not None
    assert kept.kept
    assert ledger.routes.batches == lookups  # no lookup
    assert await ledger.record(msgspec.structs.replace(delivery("ada", 1, 1), route=kept))
    owner_sql(
        database_url,
        "UPDATE calendar_connections SET webhook_signing_key_enc = webhook_signing_key_enc"
        " WHERE user_id = 'ada'",
    )
    with pytest.raises(RouteChanged):
        await ledger.record(msgspec.structs.replace(delivery("ada", 2, 1), route=kept))
    assert events_of(database_url, "ada") == [delivery("ada", 1, 1).event_id]
    again = await ledger.route(webhook_token="token-ada1")
    assert again is not None
    assert not again.kept  # forgotten when it was found out of date: read afresh
    assert again.version != first.version
    assert ledger.routes.batches == lookups + 1
    assert await ledger.record(msgspec.structs.replace(delivery("ada", 2, 1), route=again))


async def test_a_disconnected_connections_kept_route_writes_nothing(
    ledger: PostgresDeliveryLedger, database_url: str, pool: Pool, cipher: AesGcmTokenCipher
) -> None:
    kept = await ledger.route(webhook_token="token-bob2")
    assert kept is not None
    async with unit_of_work_factory(pool, cipher)("bob") as uow:
        bob = await uow.connections.get("bob")
        assert bob is not None
        await uow.connections.save(bob.disconnected(T0))
        await uow.commit()
    for record in (
        delivery("bob", 1, 1),
        msgspec.structs.replace(delivery("bob", 1, 2), change=None, outcome="ignored"),
    ):
        with pytest.raises(RouteChanged):
            await ledger.record(msgspec.structs.replace(record, route=kept))
    assert events_of(database_url, "bob") == []
    assert owner_sql(database_url, "SELECT 1 FROM meetings WHERE user_id = 'bob'") == []
    assert await ledger.route(webhook_token="token-bob2") is None
    lookups = ledger.routes.batches
    assert await ledger.route(webhook_token="token-bob2") is None
    assert ledger.routes.batches == lookups + 1  # no route is never kept


def test_kept_routes_are_bounded_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    kept = KeptRoutes(max_routes=2, seconds=60)
    routes = {u: route_of(u) for u in USERS}
    for u in USERS:
        kept.put(f"token-{u}", routes[u])
        clock[0] += 1
    assert len(kept) == 2
    assert kept.get("token-ada") is None  # the one read first went first
    assert kept.get("token-bob") == msgspec.structs.replace(routes["bob"], kept=True)
    kept.put("token-bob-new", routes["bob"])  # bob's connection has a new token
    assert kept.get("token-bob") is None
    kept.forget_connection(routes["cy"].connection_id)
    assert kept.get("token-cy") is None
    assert len(kept) == 1
    kept.forget_connection(routes["bob"].connection_id)  # by the new token's entry
    assert len(kept) == 0
    kept.put("token-ada", routes["ada"])
    clock[0] += 59
    assert kept.get("token-ada") is not None
    clock[0] += 1
    kept.put("token-cy", routes["cy"])  # any call drops what expired, whatever it asks
    assert len(kept) == 1
    assert kept.get("token-ada") is None


async def test_kept_routes_expire_while_nothing_comes() -> None:
    """The unsealed keys go when their time is up, though no delivery comes to drop them."""
    kept = KeptRoutes(max_routes=10, seconds=0.05)
    kept.put("token-ada", route_of("ada"))
    assert len(kept) == 1
    await asyncio.sleep(0.2)
    assert len(kept) == 0


async def test_the_pools_connections_read_committed_whatever_the_default(
    reference_url: str,
) -> None:
    """The check of a kept route (DR-60) and the lock order (DR-33) need each statement to see
    what committed before it: a database whose default is otherwise does not change that."""
    owner_sql(
        reference_url,
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %%I SET default_transaction_isolation"
        " = ''repeatable read''', current_database()); END $$",
    )
    assert owner_sql(reference_url, "SHOW transaction_isolation") == [("repeatable read",)]
    pool = make_pool(reference_url, runtime_role=RUNTIME_ROLE, min_size=1, max_size=1)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute("SHOW transaction_isolation")
            assert await cursor.fetchone() == {"transaction_isolation": "read committed"}
    finally:
        await pool.close()


async def test_a_route_changed_while_the_batch_waits_for_its_user_is_found_out(
    ledger: PostgresDeliveryLedger, database_url: str, pool: Pool, cipher: AesGcmTokenCipher
) -> None:
    """A connection's writer holds its user's lock (DR-33) while it replaces the route (a new
    key); a delivery judged by the route kept before waits for that lock, and once the writer
    commits, its statement sees the new route and writes nothing."""
    kept = await ledger.route(webhook_token="token-ada1")
    assert kept is not None
    async with unit_of_work_factory(pool, cipher)("ada") as uow:
        ada = await uow.connections.get("ada")
        assert ada is not None
        await uow.connections.save(
            ada.with_subscription(ada.subscription_uri or "", Secret("key-new"), T0)
        )
        record = asyncio.create_task(
            ledger.record(msgspec.structs.replace(delivery("ada", 1, 1), route=kept))
        )
        await asyncio.sleep(0.1)
        assert not record.done()  # waiting for ada's lock
        await uow.commit()
    with pytest.raises(RouteChanged):
        await record
    assert events_of(database_url, "ada") == []


async def test_a_route_changed_is_found_out_on_the_alone_path_too(
    ledger: PostgresDeliveryLedger, database_url: str
) -> None:
    """A batch that fails (one delivery's bad data) writes each delivery alone: there too a
    delivery under a route out of date writes nothing, answers RouteChanged, and its route is
    no longer kept."""
    kept = await ledger.route(webhook_token="token-ada1")
    assert kept is not None
    owner_sql(
        database_url,
        "UPDATE calendar_connections SET webhook_signing_key_enc = webhook_signing_key_enc"
        " WHERE user_id = 'ada'",
    )
    broken = Route(user_id="bob", connection_id="not-a-uuid", calendly_user_uri="x")
    answers = await asyncio.gather(
        ledger.record(msgspec.structs.replace(delivery("ada", 1, 1), route=kept)),
        ledger.record(msgspec.structs.replace(delivery("bob", 1, 1), route=broken)),
        ledger.record(delivery("cy", 1, 1)),
        return_exceptions=True,
    )
    assert ledger.fallbacks == 1
    assert isinstance(answers[0], RouteChanged)
    assert isinstance(answers[1], psycopg.errors.InvalidTextRepresentation)
    assert answers[2] is True
    assert events_of(database_url, "ada") == []
    again = await ledger.route(webhook_token="token-ada1")
    assert again is not None
    assert not again.kept


# ------------------------------------------------------- one statement for many users (DR-61)


def every_column(url: str) -> dict[str, Any]:
    """`stored`, and every column a delivery writes that the database does not make itself."""
    return {
        **stored(url),
        "meeting_columns": sorted(
            owner_sql(
                url,
                "SELECT event_uri, name, start_time, end_time, status, location::text,"
                " cancellation::text, details_requested_at IS NULL FROM meetings",
            )
        ),
        "invitee_columns": sorted(
            owner_sql(
                url,
                "SELECT invitee_uri, email, name, timezone, status, cancellation::text,"
                " rescheduled, old_invitee_uri, new_invitee_uri, no_show, no_show_changed_at"
                " FROM meeting_invitees",
            )
        ),
        "payloads": sorted(
            owner_sql(url, "SELECT event_id, payload::text FROM calendly_webhook_events")
        ),
    }


def rich(record: DeliveryRecord) -> DeliveryRecord:
    """`record` with a location, its cancellation's details and a JSON body (as Calendly's)."""
    change = record.change
    assert change is not None
    assert change.invitee is not None
    canceled = change.meeting.status == MeetingStatus.CANCELED
    cancellation = Cancellation(canceled_by="Guest", reason="conflict") if canceled else None
    meeting = msgspec.structs.replace(
        change.meeting,
        location={"type": "zoom", "join_url": "https://zoom.test/j/1"},
        end_time=T0 + timedelta(minutes=30),
        cancellation=cancellation,
    )
    invitee = msgspec.structs.replace(
        change.invitee, name="Guest Ü", timezone="Europe/Berlin", cancellation=cancellation
    )
    return msgspec.structs.replace(
        record,
        payload=b'{"event": "%s", "payload": {"name": "Guest \\u00dc", "n": [1, 2.5]}}'
        % record.event_type.encode(),
        change=msgspec.structs.replace(change, meeting=meeting, invitee=invitee),
    )


def lacking_details(user: str, event: int) -> DeliveryRecord:
    """A delivery in the pre-2022 shape (its event to be read, DR-47): never in a round."""
    plain = delivery(user, event, 9)
    assert plain.change is not None
    return msgspec.structs.replace(
        plain,
        event_id=f"{plain.event_id}:legacy",
        change=MeetingChange(
            meeting=Meeting(event_uri=plain.change.meeting.event_uri), needs_details=True
        ),
    )


PLAIN_ROUNDS = [
    delivery("ada", 1, 1),
    delivery("bob", 1, 1),
    delivery("ada", 2, 1),
    delivery("cy", 1, 1),
    delivery("bob", 1, 1),  # a copy
    delivery("ada", 1, 1, cancel=True),
]
# ada's deliveries of both kinds all go apart, in the order they came; bob's and cy's in a round.
MIXED = [
    delivery("ada", 1, 1),
    lacking_details("ada", 1),
    delivery("bob", 1, 1),
    delivery("ada", 1, 1, cancel=True),
    delivery("cy", 2, 1),
    delivery(None, 3, 1),
]


@pytest.mark.parametrize(
    ("batch", "rounds"),
    [([rich(d) for d in PLAIN_ROUNDS], 3), (PLAIN_ROUNDS, 3), (MIXED, 1)],
    ids=["plain, with every field", "plain", "mixed kinds"],
)
async def test_a_round_statement_leaves_and_answers_what_one_statement_each_would(
    batch: list[DeliveryRecord],
    rounds: int,
    ledger: PostgresDeliveryLedger,
    database_url: str,
    reference_url: str,
    cipher: AesGcmTokenCipher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One statement per round of many users (DR-61): every column and answer as written one
    delivery per transaction, and a user's deliveries in the order they came."""
    reference_pool = make_pool(reference_url, runtime_role=RUNTIME_ROLE, min_size=1, max_size=2)
    await reference_pool.open(wait=True)
    try:
        one_by_one = unit_of_work_factory(reference_pool, cipher)
        await connected(one_by_one)
        expected = [await UnitOfWorkLedger(one_by_one).record(d) for d in batch]
    finally:
        await reference_pool.close()
    sent = sent_statements(monkeypatch)
    answers = await asyncio.gather(*(ledger.record(d) for d in batch))
    assert list(answers) == expected
    assert sent.count(RECORD_AND_APPLY_BATCH) == rounds
    assert ledger.fallbacks == 0
    assert every_column(database_url) == every_column(reference_url)


async def test_without_the_batch_writer_each_delivery_goes_by_its_own_statement(
    pool: Pool, cipher: AesGcmTokenCipher, monkeypatch: pytest.MonkeyPatch
) -> None:
    uow = unit_of_work_factory(pool, cipher)
    await connected(uow)
    ledger = PostgresDeliveryLedger(pool, cipher, UnitOfWorkLedger(uow), together=False)
    sent = sent_statements(monkeypatch)
    assert await asyncio.gather(*(ledger.record(d) for d in PLAIN_ROUNDS)) == [
        True,
        True,
        True,
        True,
        False,
        True,
    ]
    assert RECORD_AND_APPLY_BATCH not in sent
    assert group_commit.AS_BATCH_WRITER not in sent


async def test_a_batch_writer_refused_at_run_time_writes_alone_and_is_used_no_more(
    ledger: PostgresDeliveryLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its policy dropped while the service runs: the batch is written one delivery at a
    time (nothing lost), and later batches go without the batch writer."""
    owner_sql(database_url, "DROP POLICY batch_users ON meetings")
    sent = sent_statements(monkeypatch)
    first = [delivery("ada", 1, 1), delivery("bob", 1, 1)]
    assert await asyncio.gather(*(ledger.record(d) for d in first)) == [True, True]
    assert ledger.fallbacks == 1
    assert RECORD_AND_APPLY_BATCH in sent
    sent.clear()
    later = [delivery("ada", 2, 1), delivery("cy", 1, 1)]
    assert await asyncio.gather(*(ledger.record(d) for d in later)) == [True, True]
    assert RECORD_AND_APPLY_BATCH not in sent
    assert ledger.fallbacks == 1
    assert events_of(database_url, "bob")


async def test_a_route_out_of_date_fails_only_its_delivery_in_a_round(
    ledger: PostgresDeliveryLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = sent_statements(monkeypatch)
    stale = msgspec.structs.replace(route_of("bob"), version="1")  # no route has this xmin
    batch = [
        delivery("ada", 1, 1),
        msgspec.structs.replace(delivery("bob", 1, 1), route=stale),
        delivery("cy", 1, 1),
    ]
    answers = await asyncio.gather(*(ledger.record(d) for d in batch), return_exceptions=True)
    assert answers[0] is True
    assert answers[2] is True
    assert isinstance(answers[1], RouteChanged)
    assert RECORD_AND_APPLY_BATCH in sent
    assert events_of(database_url, "bob") == []
    assert events_of(database_url, "ada")
    assert events_of(database_url, "cy")


async def test_the_batch_writer_writes_only_the_batchs_users(
    pool: Pool, cipher: AesGcmTokenCipher
) -> None:
    """The role a batch takes (migrations/0019) may write the users it named and no other;
    its policies do not apply to the runtime role, whatever `app.batch_users` says."""
    await connected(unit_of_work_factory(pool, cipher))
    insert = (
        "INSERT INTO meeting_change_users (user_id, last_seq) VALUES (%s, 1)"
        " ON CONFLICT (user_id) DO UPDATE SET last_seq = meeting_change_users.last_seq + 1"
    )
    async with pool.connection() as conn:
        named = group_commit.BATCH_USERS_SEPARATOR.join(["ada", "cy", "acme,eu"])
        await conn.execute(group_commit.AS_BATCH_WRITER, (named,))
        await conn.execute(insert, ("ada",))
        await conn.execute(insert, ("acme,eu",))  # any printable id, commas too
        for other in ("bob", "acme", "eu"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                async with conn.transaction():  # a savepoint: the refusal ends only it
                    await conn.execute(insert, (other,))
        await conn.rollback()
        await conn.execute("SELECT set_config('app.batch_users', 'bob', true)")
        await conn.execute("SELECT set_config('app.user_id', 'ada', true)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute(insert, ("bob",))  # the runtime role: ada's tenant only
        await conn.rollback()
