"""Signed deliveries with hostile content, over real HTTP against the real service (issue 10).

RELIABILITY.md rows 31 (text Postgres cannot store), 32 (deeply nested JSON) and 34 (times
outside what the platform can represent): promise 3, a signed delivery is never answered 4xx or
5xx for its content; promise 4, nothing unsigned has an effect or produces a 5xx.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import psycopg
import pytest
import structlog

from entrypoints.logging import configure_logging
from tests.support.deliveries import BASE, envelope, invitee_payload, sign
from tests.support.journeys import call, connect, meetings, sandbox_user_id
from tests.support.sandbox import SandboxDriver
from tests.support.service import RunningService, running_service

EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Everything the service logs (the project's own logging, JSON), restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_structlog = structlog.get_config()
    saved_hook = sys.excepthook
    out = io.StringIO()
    configure_logging(fmt="json", level="DEBUG", stream=out)
    try:
        yield out
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_structlog)
        sys.excepthook = saved_hook


@pytest.fixture
async def service(
    sandbox: SandboxDriver, database_url: str, logs: io.StringIO
) -> AsyncIterator[RunningService]:
    async with running_service(database_url, sandbox.url) as running:
        yield running


def owner_sql(service: RunningService, query: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(service.settings.database.url.reveal(), autocommit=True) as conn:
        cursor = conn.execute(query.encode(), params)
        return cursor.fetchall() if cursor.description else []


async def deliver(
    http: aiohttp.ClientSession,
    service: RunningService,
    body: bytes,
    *,
    key: str | None = "app",
    path: str = "/webhooks/calendly",
) -> tuple[int, Any]:
    """POST `body` to `path`, signed with `key` ("app": the app's key; None: no signature)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Calendly-Webhook-Signature"] = sign(
            body, service.signing_key if key == "app" else key
        )
    async with http.post(f"{service.url}{path}", data=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


def assert_no_traceback(logs: io.StringIO) -> None:
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.strip()]
    assert lines, "the service logged nothing at all"
    for line in lines:
        assert "exception" not in line, line
        assert line.get("level") not in ("error", "critical"), line
    assert "Traceback" not in logs.getvalue()
    assert "RecursionError" not in logs.getvalue()


# ------------------------------------------------------ row 31: NUL and lone surrogates
async def test_a_nul_in_a_signed_booking_is_cleaned_stored_and_listed(
    sandbox: SandboxDriver, service: RunningService, http: aiohttp.ClientSession
) -> None:
    await connect(http, service, "alice", "ada@example.com")
    ada = await sandbox_user_id(sandbox, "ada@example.com")

    booked = await sandbox.book(
        ada,
        event_name="Intro\u0000call",
        invitees=[{"name": "Eve\u0000", "email": "eve\u0000@example.org"}],
        wait=True,
    )
    invitee_id = booked["invitees"][0]["uri"].rsplit("/", 1)[1]
    canceled = await sandbox.control(
        "POST",
        f"/_sandbox/invitees/{invitee_id}/cancel",
        {"reason": "sick\u0000", "wait": True},
        expect=201,
    )

    statuses = [d["attempts"][-1]["status"] for d in booked["deliveries"]]
    statuses += [d["attempts"][-1]["status"] for d in canceled["deliveries"]]
    assert statuses == [200, 200]
    (meeting,) = await meetings(http, service, "alice")
    assert meeting["name"] == "Introcall"
    (invitee,) = meeting["invitees"]
    assert invitee["name"] == "Eve"
    assert invitee["email"] == "eve@example.org"
    assert invitee["status"] == "canceled"
    assert invitee["cancellation"]["reason"] == "sick"
    assert owner_sql(service, "SELECT outcome FROM calendly_webhook_events") == [
        ("applied",),
        ("applied",),
    ]


async def test_nul_everywhere_in_a_hand_made_signed_delivery_is_never_a_5xx(
    service: RunningService, http: aiohttp.ClientSession
) -> None:
    connection = await connect(http, service, "alice", "ada@example.com")
    host = connection.connection["calendly_user_uri"]
    payload = invitee_payload(
        host_uri=host, event_id="e\u0000", invitee_id="i\u0000", canceler_type="host\u0000"
    )
    payload["timezone"] = "Europe/\u0000Paris"
    payload["scheduled_event"]["location"] = {
        "type": "custom\u0000",
        "nested\u0000key": {"deeper": ["\u0000", {"\u0000": "\u0000"}]},
    }
    body = envelope("invitee.created", payload, host)

    status, answer = await deliver(http, service, body)
    again, _ = await deliver(http, service, body)

    assert (status, answer, again) == (200, {"outcome": "applied"}, 200)
    (meeting,) = await meetings(http, service, "alice")
    assert meeting["event_uri"] == f"{BASE}/scheduled_events/e"
    assert meeting["location"] == {"type": "custom", "nestedkey": {"deeper": ["", {"": ""}]}}
    (invitee,) = meeting["invitees"]
    assert invitee["invitee_uri"] == f"{BASE}/scheduled_events/e/invitees/i"
    assert invitee["cancellation"]["canceler_type"] == "host"


# ------------------------------------------------------------- row 32: deep nesting
def nested(depth: int) -> bytes:
    """A Calendly-shaped delivery whose payload carries a value nested `depth` levels."""
    deep = b"[" * depth + b"]" * depth
    return b'{"event": "invitee.created", "payload": {"uri": "x", "q": ' + deep + b"}}"


@pytest.mark.parametrize(
    "body",
    [
        nested(1000),
        b'{"event": "invitee.created", "payload": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"event": "routing_form.created", "payload": ' + b'{"a":' * 1000 + b"1" + b"}" * 1001,
        b'{"event": "invitee.created", "x": ' + b"[" * 1000 + b"]" * 1000 + b', "payload": {}}',
    ],
    ids=["in-payload", "payload", "other-event", "envelope"],
)
async def test_a_deeply_nested_signed_delivery_is_stored_aside_without_a_traceback(
    service: RunningService, http: aiohttp.ClientSession, logs: io.StringIO, body: bytes
) -> None:
    assert len(body) < 8 * 1024

    status, answer = await deliver(http, service, body)

    assert (status, answer) == (200, {"outcome": "stored_aside"})
    ((outcome, payload, raw),) = owner_sql(
        service, "SELECT outcome, payload, raw_payload FROM calendly_webhook_events"
    )
    assert outcome == "unusable"
    assert payload is None
    assert bytes(raw) == body  # kept exactly as it came
    assert_no_traceback(logs)


@pytest.mark.parametrize("key", [None, "not-a-configured-key"], ids=["unsigned", "forged"])
@pytest.mark.parametrize("own_url", [False, True], ids=["shared-url", "connection-url"])
async def test_a_deeply_nested_unsigned_or_forged_delivery_is_401_without_a_traceback(
    service: RunningService,
    http: aiohttp.ClientSession,
    logs: io.StringIO,
    key: str | None,
    own_url: bool,
) -> None:
    path = "/webhooks/calendly"
    if own_url:
        await connect(http, service, "alice", "ada@example.com")
        ((token,),) = owner_sql(service, "SELECT webhook_token FROM calendar_connections")
        path = f"{path}/{token}"

    status, answer = await deliver(http, service, nested(1000), key=key, path=path)

    assert status == 401
    assert answer["status"] == 401
    assert owner_sql(service, "SELECT count(*) FROM calendly_webhook_events") == [(0,)]
    assert_no_traceback(logs)


# ------------------------------------------------- row 34: times outside datetime's range
def with_time(host: str, where: str, moment: str) -> bytes:
    """A signed-to-be delivery that carries `moment` in one of the times Calendly sends."""
    if where == "envelope":
        payload = invitee_payload(host_uri=host, event_id="e1", invitee_id="i1")
        return envelope("invitee.created", payload, host, created_at=moment)
    if where == "no_show":
        payload = invitee_payload(host_uri=host, event_id="e1", invitee_id="i1", no_show_id="n1")
        payload["no_show"]["created_at"] = moment
        data = json.loads(envelope("invitee_no_show.created", payload, host))
        data["created_at"] = None  # the no-show's own time is the change's time
        return json.dumps(data).encode()
    payload = invitee_payload(
        host_uri=host, event_id="e1", invitee_id="i1", canceler_type="invitee"
    )
    if where == "start":
        payload["scheduled_event"]["start_time"] = moment
    elif where == "end":
        payload["scheduled_event"]["end_time"] = moment
    elif where == "event_cancellation":
        payload["scheduled_event"]["cancellation"] = {"created_at": moment}
    else:
        payload["cancellation"]["created_at"] = moment
    return envelope("invitee.created", payload, host)


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00"])
@pytest.mark.parametrize(
    "where", ["start", "end", "event_cancellation", "cancellation", "no_show", "envelope"]
)
async def test_a_time_outside_datetimes_range_is_stored_aside_and_listing_still_works(
    service: RunningService, http: aiohttp.ClientSession, where: str, moment: str
) -> None:
    connection = await connect(http, service, "alice", "ada@example.com")
    body = with_time(connection.connection["calendly_user_uri"], where, moment)

    status, answer = await deliver(http, service, body)

    assert (status, answer) == (200, {"outcome": "stored_aside"})
    ((outcome, reason),) = owner_sql(service, "SELECT outcome, reason FROM calendly_webhook_events")
    assert outcome == "unusable"
    assert "UTC" in reason
    assert await meetings(http, service, "alice") == []


@pytest.mark.parametrize(
    ("stored", "read_as"),
    [
        ("-infinity", EARLIEST),
        ("infinity", LATEST),
        ("0001-01-01 00:00:00+05", EARLIEST),  # 1 BC in UTC
        ("4713-01-01 00:00:00+00 BC", EARLIEST),
        ("10000-01-01 00:00:00+00", LATEST),
        ("294276-12-31 23:59:59+00", LATEST),
    ],
)
async def test_stored_times_outside_datetimes_range_never_break_the_listing(
    service: RunningService, http: aiohttp.ClientSession, stored: str, read_as: datetime
) -> None:
    await connect(http, service, "alice", "ada@example.com")
    ((connection_id,),) = owner_sql(service, "SELECT id FROM calendar_connections")
    owner_sql(
        service,
        "WITH m AS (INSERT INTO meetings (user_id, connection_id, event_uri, status,"
        " start_time, end_time, cancellation)"
        " VALUES ('alice', %s, 'https://x/e1', 'active', %s, %s,"
        " jsonb_build_object('canceled_at', %s::text)) RETURNING id)"
        " INSERT INTO meeting_invitees (user_id, connection_id, meeting_id, invitee_uri,"
        " status, no_show, no_show_changed_at, cancellation)"
        " SELECT 'alice', %s, m.id, 'https://x/i1', 'active', true, %s,"
        " jsonb_build_object('canceled_at', %s::text) FROM m",
        connection_id,
        stored,
        stored,
        stored,
        connection_id,
        stored,
        stored,
    )

    status, body = await call(http, service, "GET", "/api/meetings", "alice")
    later, _ = await call(http, service, "GET", "/api/meetings?status=active", "alice")

    assert (status, later) == (200, 200), body
    (meeting,) = body["meetings"]
    expected = read_as.isoformat().replace("+00:00", "Z")
    assert meeting["start_time"] == meeting["end_time"] == expected
    assert meeting["cancellation"]["canceled_at"] == expected
    (invitee,) = meeting["invitees"]
    assert invitee["cancellation"]["canceled_at"] == expected
