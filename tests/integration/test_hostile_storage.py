"""Hostile content against real Postgres (issue 10; RELIABILITY rows 31, 32, 34).

Where the rules live: the meetings repository's write path makes text storable for every
source (webhooks and sync), the delivery log keeps what it cannot store as jsonb as raw bytes,
and the pool's timestamptz loader reads any stored time, however far out, as a datetime.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from adapters.postgres import pool as postgres_pool
from domain.meetings import Cancellation, Invitee, Meeting, MeetingStatus
from domain.ports import MeetingChange, MeetingQuery, MeetingView, UnitOfWorkFactory
from entrypoints.service.worker import Worker
from tests.integration.conftest import Pool
from tests.support.connections import CID_A, add, connection
from tests.support.real_core import RealCore, connect_free, owner_sql, user_id_of

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)
NUL, SURROGATE = "\u0000", "\ud800"


async def listed(uow: UnitOfWorkFactory, user_id: str = "a") -> list[MeetingView]:
    async with uow(user_id) as u:
        return list(await u.meetings.list(user_id, MeetingQuery(limit=50)))


# ------------------------------------------------------------- row 31: storable text
def hostile_change(bad: str) -> MeetingChange:
    """A change with `bad` in every text column and in every string and key of its jsonb."""
    event_uri = f"https://api.calendly.test/scheduled_events/e{bad}"
    cancellation = Cancellation(
        canceled_by=f"Host{bad}", reason=f"busy{bad}", canceler_type=f"host{bad}", canceled_at=T0
    )
    meeting = Meeting(
        event_uri=event_uri,
        name=f"Intro{bad}",
        start_time=T0,
        end_time=T0 + timedelta(minutes=30),
        status=MeetingStatus.CANCELED,
        location={"type": f"zoom{bad}", f"key{bad}": [f"v{bad}", {"n": 1, bad: bad}]},
        cancellation=cancellation,
    )
    invitee = Invitee(
        invitee_uri=f"{event_uri}/invitees/i{bad}",
        event_uri=event_uri,
        email=f"eve{bad}@example.org",
        name=f"Eve{bad}",
        timezone=f"Europe/Paris{bad}",
        status=MeetingStatus.CANCELED,
        cancellation=cancellation,
        rescheduled=True,
        old_invitee_uri=f"{event_uri}/invitees/old{bad}",
        new_invitee_uri=f"{event_uri}/invitees/new{bad}",
    )
    return MeetingChange(meeting=meeting, invitee=invitee, no_show=True, no_show_at=T0)


@pytest.mark.parametrize(
    ("bad", "clean"), [(NUL, ""), (SURROGATE, "\ufffd"), (NUL + SURROGATE, "\ufffd")]
)
async def test_text_postgres_cannot_store_is_cleaned_in_every_column(
    pg_uow: UnitOfWorkFactory, bad: str, clean: str
) -> None:
    stored = await add(pg_uow, connection("a", 1, CID_A))
    change = hostile_change(bad)

    for _ in range(2):  # the insert, then the merge of the same meeting and invitee
        async with pg_uow("a") as uow:
            await uow.meetings.apply(stored, change)
            await uow.commit()

    (view,) = await listed(pg_uow)
    expected = hostile_change(clean)
    assert view.meeting == expected.meeting
    (invitee,) = view.invitees
    assert expected.invitee is not None
    assert invitee == expected.invitee.with_no_show(True, T0)


async def test_a_delivery_jsonb_cannot_hold_is_kept_as_raw_bytes(
    pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    nested = b'{"event": "x", "payload": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    with_nul = b'{"event": "x\\u0000", "payload": {}}'
    async with pg_uow() as uow:
        for n, body in enumerate((nested, with_nul)):
            kept = await uow.webhook_events.record(
                event_id=f"unrouted:{n}{NUL}",
                event_type=f"x{NUL}",
                payload=body,
                connection=None,
                outcome="unusable",
                reason=f"cannot be read: {NUL}",
            )
            assert kept
        await uow.commit()

    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT event_id, event_type, payload, raw_payload, reason"
            " FROM calendly_webhook_events ORDER BY event_id"
        ).fetchall()
    assert rows == [
        ("unrouted:0", "x", None, nested, "cannot be read: "),
        ("unrouted:1", "x", None, with_nul, "cannot be read: "),
    ]


async def test_a_sync_with_nul_in_calendlys_answers_stores_the_meeting(
    real: RealCore, workers: tuple[Worker, Worker]
) -> None:
    await connect_free(real, "eve-host", "host@example.com")  # no webhooks: sync only
    host = await user_id_of(real, "host@example.com")
    booked = await real.sandbox.book(
        host,
        event_name=f"Intro{NUL}call",
        invitees=[{"name": f"Eve{NUL}", "email": f"eve{NUL}@example.org"}],
    )
    invitee_id = booked["invitees"][0]["uri"].rsplit("/", 1)[1]
    await real.sandbox.control(
        "POST", f"/_sandbox/invitees/{invitee_id}/cancel", {"reason": f"sick{NUL}"}, expect=201
    )
    worker, _ = workers

    assert await worker.run_once() == 1

    ((error,),) = owner_sql(real, "SELECT last_error FROM connection_maintenance")
    assert error is None
    rows = owner_sql(
        real,
        "SELECT m.name, i.name, i.email, i.cancellation->>'reason'"
        " FROM meetings m JOIN meeting_invitees i ON i.meeting_id = m.id",
    )
    assert rows == [("Introcall", "Eve", "eve@example.org", "sick")]


# --------------------------------------------------- row 34: times outside the range
EVENTS_ROUTE = "GET /scheduled_events"


async def test_a_sync_skips_an_event_whose_times_utc_cannot_hold(
    real: RealCore, workers: tuple[Worker, Worker]
) -> None:
    await connect_free(real, "fred-user", "fred@example.com")
    fred = await user_id_of(real, "fred@example.com")
    booked = await real.sandbox.book(fred)
    good: dict[str, Any] = booked["event"]
    bad = [
        {**good, "uri": f"{good['uri']}-early", "start_time": "0001-01-01T00:00:00+05:00"},
        {**good, "uri": f"{good['uri']}-late", "end_time": "9999-12-31T23:00:00-05:00"},
        {
            **good,
            "uri": f"{good['uri']}-canceled",
            "cancellation": {"created_at": "9999-12-31T23:00:00-05:00"},
        },
    ]
    page = {"collection": [*bad, good], "pagination": {"next_page_token": None}}
    await real.sandbox.fault(EVENTS_ROUTE, status=200, body=page)
    worker, _ = workers

    assert await worker.run_once() == 1

    ((error,),) = owner_sql(real, "SELECT last_error FROM connection_maintenance")
    assert error is None
    assert owner_sql(real, "SELECT event_uri FROM meetings") == [(good["uri"],)]


STORED_TIMES = [
    ("-infinity", EARLIEST),
    ("infinity", LATEST),
    ("0001-01-01 00:00:00+05", EARLIEST),  # 1 BC once in UTC
    ("4713-01-01 00:00:00+00 BC", EARLIEST),
    ("10000-01-01 00:00:00+00", LATEST),
    ("294276-12-31 23:59:59+00", LATEST),
    ("9999-12-31 23:59:59.999999+00", LATEST),
    ("0001-01-01 00:00:00+00", EARLIEST),
    ("2030-01-01 12:00:00+00", T0),
]


def insert_meeting(database_url: str, at: str, *, user_id: str = "a") -> None:
    """One meeting with one invitee, every time in it `at`, written as the superuser."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "WITH m AS (INSERT INTO meetings (user_id, connection_id, event_uri, status,"
            " start_time, end_time, cancellation, updated_at)"
            " VALUES (%(user)s, %(cid)s, 'https://x/e1', 'active', %(at)s, %(at)s,"
            " jsonb_build_object('canceled_at', %(at)s::timestamptz::text), %(at)s)"
            " RETURNING id)"
            " INSERT INTO meeting_invitees (user_id, connection_id, meeting_id, invitee_uri,"
            " status, no_show, no_show_changed_at, cancellation)"
            " SELECT %(user)s, %(cid)s, m.id, 'https://x/i1', 'active', true, %(at)s,"
            " jsonb_build_object('canceled_at', %(at)s::text) FROM m",
            {"user": user_id, "cid": CID_A, "at": at},
        )


@pytest.mark.parametrize(("stored", "read_as"), STORED_TIMES)
async def test_stored_times_outside_datetimes_range_read_as_the_nearest_bound(
    pg_uow: UnitOfWorkFactory, database_url: str, stored: str, read_as: datetime
) -> None:
    await add(pg_uow, connection("a", 1, CID_A))
    insert_meeting(database_url, stored)

    (view,) = await listed(pg_uow)
    async with pg_uow("a") as uow:
        (changed,) = await uow.meetings.changed_since("a", 0, 10)

    assert changed == view
    meeting, (invitee,) = view.meeting, view.invitees
    assert meeting.cancellation is not None
    assert invitee.cancellation is not None
    times = [
        meeting.start_time,
        meeting.end_time,
        view.updated_at,
        meeting.cancellation.canceled_at,
        invitee.cancellation.canceled_at,
        invitee.no_show_changed_at,
    ]
    assert times == [read_as] * 6
    for moment in times:
        assert moment is not None
        assert moment.astimezone(UTC) == read_as


async def test_a_connections_times_outside_the_range_read_as_the_bounds(
    pg_uow: UnitOfWorkFactory, database_url: str
) -> None:
    await add(pg_uow, connection("a", 1, CID_A))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE calendar_connections SET token_expires_at = 'infinity',"
            " created_at = '-infinity', updated_at = '20000-01-01 00:00:00+00'"
        )

    async with pg_uow("a") as uow:
        loaded = await uow.connections.get("a")

    assert loaded is not None
    assert loaded.tokens is not None
    assert (loaded.tokens.expires_at, loaded.created_at, loaded.updated_at) == (
        LATEST,
        EARLIEST,
        LATEST,
    )


OUT_OF_RANGE = (
    "SELECT '-infinity'::timestamptz AS a, 'infinity'::timestamptz AS b,"
    " '0001-01-01 00:00:00+05'::timestamptz AS c, '10000-01-01 00:00:00+00'::timestamptz AS d,"
    " '2030-01-01 12:00:00+00'::timestamptz AS e"
)
AT_THE_EDGES = (
    "SELECT '0001-01-01 00:00:00+00'::timestamptz AS a, '0001-01-01 04:00:00+00'::timestamptz AS b,"
    " '9999-12-31 20:00:00+00'::timestamptz AS c,"
    " '9999-12-31 23:59:59.999999+00'::timestamptz AS d"
)


async def read(pool: Pool, query: str, *, binary: bool, zone: str) -> list[Any]:
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT set_config('TimeZone', %s, true)", (zone,))
        cursor = conn.cursor(binary=binary)
        await cursor.execute(query.encode())
        row = await cursor.fetchone()
    assert row is not None
    return list(row.values())


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("zone", ["UTC", "Asia/Karachi", "America/New_York", "+14", "-12"])
async def test_the_pools_connections_read_any_timestamptz(
    pool: Pool, binary: bool, zone: str
) -> None:
    values = await read(pool, OUT_OF_RANGE, binary=binary, zone=zone)

    assert values == [EARLIEST, LATEST, EARLIEST, LATEST, T0]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
async def test_times_inside_the_range_are_read_exactly_up_to_its_edges(
    pool: Pool, binary: bool
) -> None:
    # In a session zone far from UTC, Postgres writes a time within hours of an edge as BC or
    # as year 10000 (psycopg's own loader refuses it): it then reads as that edge.
    values = await read(pool, AT_THE_EDGES, binary=binary, zone="UTC")

    assert values == [
        EARLIEST,
        datetime(1, 1, 1, 4, tzinfo=UTC),
        datetime(9999, 12, 31, 20, tzinfo=UTC),
        LATEST,
    ]


def test_a_plain_connection_refuses_what_the_pools_connections_clamp(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        with pytest.raises(psycopg.DataError):
            conn.execute("SELECT 'infinity'::timestamptz").fetchone()
        postgres_pool.clamp_times(conn)
        assert conn.execute("SELECT 'infinity'::timestamptz").fetchone() == (LATEST,)
