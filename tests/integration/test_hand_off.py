"""Deliveries handed to the process that writes them (DR-61): two ledgers in this process,
each as a service process would have it, hand each other deliveries over real Unix sockets
and write them in real Postgres batches. Whatever goes wrong with a hand-off, the delivery is
written where it arrived, and its caller hears what one transaction would have told it.

Most tests make both processes writers (each writes its own share of the users), so that
deliveries go both ways; the default, one writer, is tested on its own."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import psycopg_pool
import pytest
import uvloop

from adapters.crypto import AesGcmTokenCipher
from adapters.hand_off import HandOffLedger, HandOffRefused, check_directory, owner_of
from adapters.postgres.group_commit import PostgresDeliveryLedger
from adapters.postgres.unit_of_work import unit_of_work_factory
from domain.errors import RouteChanged
from domain.ports import DeliveryLedger, DeliveryRecord, Route
from domain.usecases.handle_webhook_event import UnitOfWorkLedger
from tests.support.connections import cid, owner_sql
from tests.support.ledger_records import USERS, connected, delivery

Pool = psycopg_pool.AsyncConnectionPool[Any]
PER_USER_TABLES = "meeting_invitees, meetings, calendly_webhook_events, change_log"


def split_names() -> tuple[str, str]:
    """Two process names that, both writing, each own some of USERS (deliveries go both ways)."""
    for n in range(100):
        names = (f"a{n}", f"b{n}")
        owners = {owner_of(user, names) for user in USERS}
        if len(owners) == 2:
            return names
    raise AssertionError("no two names split the users")


A, B = split_names()
OF_B = [user for user in USERS if owner_of(user, (A, B)) == B]
OF_A = [user for user in USERS if owner_of(user, (A, B)) == A]


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "hand-off"
    path.mkdir(mode=0o700)
    return path


class Pair(msgspec.Struct, kw_only=True):
    a: HandOffLedger
    b: HandOffLedger
    inner_a: PostgresDeliveryLedger
    inner_b: PostgresDeliveryLedger


@pytest.fixture
async def pair(
    pool: Pool, cipher: AesGcmTokenCipher, directory: Path, database_url: str
) -> AsyncIterator[Pair]:
    owner_sql(database_url, f"TRUNCATE {PER_USER_TABLES}")
    uow = unit_of_work_factory(pool, cipher)
    await connected(uow)
    inner_a = PostgresDeliveryLedger(pool, cipher, UnitOfWorkLedger(uow), max_running=1)
    inner_b = PostgresDeliveryLedger(pool, cipher, UnitOfWorkLedger(uow), max_running=1)
    a = HandOffLedger(inner_a, directory, name=A, writers=2)
    b = HandOffLedger(inner_b, directory, name=B, writers=2)
    await a.start()
    await b.start()
    for ledger in (a, b):
        ledger._look()  # as the next rescan would: both see both
    assert a.members == b.members == tuple(sorted((A, B)))
    try:
        yield Pair(a=a, b=b, inner_a=inner_a, inner_b=inner_b)
    finally:
        await a.stop()
        await b.stop()
        await inner_a.drain()
        await inner_b.drain()


def events(url: str) -> list[tuple[str, str]]:
    return sorted(owner_sql(url, "SELECT event_id, user_id FROM calendly_webhook_events"))


async def test_each_users_deliveries_are_written_by_its_owner(
    pair: Pair, database_url: str
) -> None:
    """Deliveries arriving at A: B's users' are written in B's batches, A's in A's own, the
    unrouted ones where they arrived; each caller hears its own answer (False: a duplicate)."""
    batch = [delivery(user, 1, 1) for user in USERS] + [delivery(None, 1, 1)]
    answers = await asyncio.gather(*(pair.a.record(d) for d in batch))
    assert answers == [True] * len(batch)
    assert pair.a.handed == len(OF_B)
    assert pair.b.served == len(OF_B)
    assert pair.a.fell_back == 0
    assert pair.inner_b.records.batches >= 1
    stored = events(database_url)
    assert sorted(user for _, user in stored if user) == sorted(USERS)
    # The same deliveries again, now arriving at B: every one a duplicate, A's users' at A.
    again = await asyncio.gather(*(pair.b.record(d) for d in batch))
    assert again == [False] * len(batch)
    assert pair.b.handed == len(OF_A)
    assert events(database_url) == stored


async def test_with_one_writer_every_routed_delivery_is_written_by_the_first_process(
    directory: Path,
) -> None:
    """The default: the first process by name writes every user's deliveries (the largest
    batches); the others write only what has no user."""
    first, second = Slow(), Slow()
    first.go.set()
    second.go.set()
    writer, other = await two(directory, first, second, writers=1)  # A sorts before B
    try:
        assert writer.writers == other.writers == (A,)
        batch = [delivery(user, 1, 1) for user in USERS] + [delivery(None, 1, 1)]
        assert await asyncio.gather(*(other.record(d) for d in batch)) == [True] * 4
        assert await asyncio.gather(*(writer.record(d) for d in batch[:1])) == [True]
    finally:
        await writer.stop()
        await other.stop()
    assert other.handed == len(USERS)
    assert writer.served == len(USERS)
    assert second.written == [batch[-1].event_id]
    assert sorted(first.written) == sorted([d.event_id for d in batch[:-1]] + [batch[0].event_id])


async def test_a_route_changed_at_the_owner_is_raised_where_the_delivery_arrived(
    pair: Pair, database_url: str
) -> None:
    ghost = Route(user_id=OF_B[0], connection_id=cid(99), calendly_user_uri="x")
    stale = msgspec.structs.replace(delivery(OF_B[0], 2, 1), route=ghost)
    with pytest.raises(RouteChanged) as raised:
        await pair.a.record(stale)
    assert raised.value.connection_id == cid(99)
    assert pair.b.served == 1
    assert pair.a.fell_back == 0  # the owner's answer stands: nothing is written here
    assert events(database_url) == []


async def test_a_delivery_the_owner_cannot_write_is_written_where_it_arrived(
    pair: Pair,
) -> None:
    """The owner's error is not sent back: the receiving process writes it itself, and its
    caller hears that write's own error."""
    broken = Route(user_id=OF_B[0], connection_id="not-a-uuid", calendly_user_uri="x")
    bad = msgspec.structs.replace(delivery(OF_B[0], 2, 1), route=broken)
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        await pair.a.record(bad)
    assert pair.b.served == 1
    assert pair.a.fell_back == 1


async def test_a_process_gone_is_left_out_and_its_users_written_here(
    pair: Pair, database_url: str
) -> None:
    await pair.b.stop()  # its socket is gone; A has not looked again yet
    assert pair.a.members == tuple(sorted((A, B)))
    assert await pair.a.record(delivery(OF_B[0], 3, 1)) is True
    assert pair.a.fell_back == 1
    assert pair.a.members == (A,)  # left out until it listens again
    assert await pair.a.record(delivery(OF_B[0], 4, 1)) is True
    assert pair.a.fell_back == 1  # no second try: A owns everyone now
    assert len(events(database_url)) == 2


async def test_a_socket_nobody_listens_on_is_removed(pair: Pair, directory: Path) -> None:
    """A process that died leaves its socket file behind: connecting is refused, the file is
    removed, and its users' deliveries are written here."""
    dead = "0-dead"  # first by name: one of the two writers
    path = directory / f"{dead}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))  # bound, never listening, closed: as a killed process leaves it
    pair.a._look()
    assert dead in pair.a.members
    users = [f"user-{n}" for n in range(200)]
    assert pair.a.writers == (dead, A)
    theirs = next(u for u in users if owner_of(u, pair.a.writers) == dead)
    record = DeliveryRecord(
        event_id="dead-1",
        event_type="invitee.created",
        payload=b"{}",
        route=Route(user_id=theirs, connection_id=cid(98), calendly_user_uri="x"),
        outcome="ignored",
    )
    with pytest.raises(RouteChanged):  # written here: no such connection
        await pair.a.record(record)
    assert pair.a.fell_back == 1
    assert dead not in pair.a.members
    assert not path.exists()


class Slow:
    """An inner ledger that answers only when let go (and counts what it wrote)."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.asked = asyncio.Event()  # a delivery is in hand
        self.written: list[str] = []

    async def route(self, **_: Any) -> Route | None:
        return None

    async def record(self, delivery: DeliveryRecord) -> bool:
        self.asked.set()
        await self.go.wait()
        self.written.append(delivery.event_id)
        return True


async def two(
    directory: Path, a_inner: DeliveryLedger, b_inner: DeliveryLedger, **kw: Any
) -> tuple[HandOffLedger, HandOffLedger]:
    kw.setdefault("writers", 2)
    a = HandOffLedger(a_inner, directory, name=A, **kw)
    b = HandOffLedger(b_inner, directory, name=B, **kw)
    await a.start()
    await b.start()
    a._look()
    b._look()
    return a, b


async def test_an_owner_that_does_not_answer_in_time_is_written_around(directory: Path) -> None:
    here, there = Slow(), Slow()
    here.go.set()
    a, b = await two(directory, here, there, answer_seconds=0.2)
    try:
        record = delivery(OF_B[0], 1, 1)
        assert await a.record(record) is True
        assert here.written == [record.event_id]
        assert a.fell_back == 1
        there.go.set()  # the owner writes it too, later: a duplicate, which the store drops
    finally:
        await a.stop()
        await b.stop()
    assert there.written == [record.event_id]


async def test_an_owner_that_stops_mid_answer_is_written_around(directory: Path) -> None:
    here, there = Slow(), Slow()
    here.go.set()
    a, b = await two(directory, here, there)
    record = delivery(OF_B[0], 1, 1)
    asked = asyncio.ensure_future(a.record(record))
    await asyncio.wait_for(there.asked.wait(), 5)
    for link in a._links.values():
        assert link.transport is not None
        link.transport.abort()  # as if B died with the delivery in hand
    assert await asyncio.wait_for(asked, 5) is True
    assert here.written == [record.event_id]
    assert a.fell_back == 1
    there.go.set()
    await a.stop()
    await b.stop()


async def test_a_process_of_another_user_is_refused(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only this user's processes may hand over deliveries (nobody else verified them): a
    connection whose credentials name another user is dropped unanswered."""
    here, there = Slow(), Slow()
    here.go.set()
    there.go.set()
    a, b = await two(directory, here, there)
    real = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real + 1)  # B now runs as somebody else
    try:
        assert await a.record(delivery(OF_B[0], 1, 1)) is True
    finally:
        monkeypatch.undo()
        await a.stop()
        await b.stop()
    assert b.served == 0
    assert there.written == []
    assert a.fell_back == 1


async def test_frames_that_make_no_sense_end_the_connection(directory: Path) -> None:
    there = Slow()
    there.go.set()
    b = HandOffLedger(there, directory, name=B)
    await b.start()
    try:
        for junk in (b"\x00\x00\x00\x03abc", b"\xff\xff\xff\xff"):
            reader, writer = await asyncio.open_unix_connection(str(directory / f"{B}.sock"))
            writer.write(junk)
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, unanswered
            writer.close()
    finally:
        await b.stop()
    assert b.served == 0


def test_the_hand_off_works_on_uvloop(directory: Path) -> None:
    """The service runs on uvloop, whose transports are not asyncio's classes."""
    here, there = Slow(), Slow()
    here.go.set()
    there.go.set()

    async def run() -> int:
        a, b = await two(directory, here, there)
        try:
            await asyncio.gather(*(a.record(delivery(user, 1, 1)) for user in USERS))
        finally:
            await a.stop()
            await b.stop()
        return b.served

    assert uvloop.run(run()) == len(OF_B)
    assert sorted(there.written) == sorted(delivery(u, 1, 1).event_id for u in OF_B)


@pytest.mark.parametrize(
    ("mode", "why"),
    [(0o755, "open to other users"), (0o770, "open to other users")],
)
def test_a_directory_open_to_others_is_refused(directory: Path, mode: int, why: str) -> None:
    directory.chmod(mode)
    with pytest.raises(HandOffRefused, match=why):
        check_directory(directory)


def test_what_is_not_a_directory_of_ours_is_refused(directory: Path) -> None:
    check_directory(directory)  # the fixture's: fine
    with pytest.raises(HandOffRefused, match="cannot be read"):
        check_directory(directory / "missing")
    file = directory / "file"
    file.write_text("")
    with pytest.raises(HandOffRefused, match="not a directory"):
        check_directory(file)
