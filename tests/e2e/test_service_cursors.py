"""Meetings cursors on the real service (Postgres): one it did not issue is a 400, never a 5xx."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.journeys import call, connect, sandbox_user_id
from tests.support.sandbox import SandboxDriver
from tests.support.service import RunningService, running_service


@dataclass
class Alice:
    """The running service, with alice connected and three meetings booked for her."""

    service: RunningService
    http: aiohttp.ClientSession
    # The `next_cursor` of her first page of one.
    issued: str

    async def page(self, cursor: str) -> tuple[int, Any]:
        return await call(
            self.http,
            self.service,
            "GET",
            "/api/meetings",
            "alice",
            params={"limit": "1", "cursor": cursor},
        )


@pytest.fixture
async def alice(
    sandbox: SandboxDriver, database_url: str, http: aiohttp.ClientSession
) -> AsyncIterator[Alice]:
    async with running_service(database_url, sandbox.url) as service:
        await connect(http, service, "alice", "ada@example.com")
        ada = await sandbox_user_id(sandbox, "ada@example.com")
        for day in (1, 2, 3):
            await sandbox.book(ada, start_time=f"2030-03-0{day}T14:30:00Z", wait=True)
        status, first = await call(
            http, service, "GET", "/api/meetings", "alice", params={"limit": "1"}
        )
        assert status == 200, first
        assert first["next_cursor"] is not None
        yield Alice(service=service, http=http, issued=first["next_cursor"])


def forged(value: object) -> str:
    """A cursor in the shape the service once used: base64url of a JSON keyset, unsigned."""
    raw = json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def assert_refused(status: int, body: Any) -> None:
    assert status == 400, body
    assert body["status"] == 400
    assert [e["parameter"] for e in body["errors"]] == ["cursor"]


async def test_the_cursors_it_issued_page_through_to_the_end(alice: Alice) -> None:
    seen: list[str] = []
    cursor: str | None = alice.issued
    while cursor is not None:
        status, body = await alice.page(cursor)
        assert status == 200, body
        seen += [m["id"] for m in body["meetings"]]
        cursor = body["next_cursor"]

    assert len(seen) == len(set(seen)) == 2


MEETING = str(uuid.uuid4())


NOT_ISSUED: list[list[object]] = [
    [None, "x"],  # the finding: an id that is no UUID failed the ::uuid cast
    ["2030-01-01T00:00:00Z", "not-a-uuid"],
    [None, "\u0000"],
    [None, "a" * 200],
    ["2030-01-01T00:00:00Z", MEETING],  # well formed, but never issued
    [None, MEETING],
    ["9999-12-31T23:59:59-14:00", MEETING],
    ["0001-01-01T00:00:00+14:00", MEETING],
    ["2030-01-01T00:00:00", MEETING],
    [1_900_000_000, MEETING],
    [None, MEETING.upper()],
    [None, "{" + MEETING + "}"],
    [None, MEETING, "extra"],
]


async def test_a_cursor_it_did_not_issue_is_a_400(alice: Alice) -> None:
    for keyset in NOT_ISSUED:
        status, body = await alice.page(forged(keyset))
        assert status == 400, (keyset, status, body)
        assert_refused(status, body)


async def test_an_altered_cursor_is_a_400(alice: Alice) -> None:
    issued = alice.issued
    for position in (0, len(issued) // 2, len(issued) - 1):
        replacement = "A" if issued[position] != "A" else "B"
        altered = issued[:position] + replacement + issued[position + 1 :]
        assert_refused(*await alice.page(altered))


def _datetimes() -> st.SearchStrategy[str]:
    moments = st.datetimes().map(lambda d: d.isoformat())
    offsets = st.sampled_from(["", "Z", "+00:00", "+14:00", "-14:00", "+23:59", "+99:99"])
    return st.builds(lambda m, o: m + o, moments, offsets)


_ids = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: u.hex),
    st.text(max_size=220),
)
_starts = st.one_of(st.none(), _datetimes(), st.text(max_size=40), st.integers(), st.floats())
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
_cursors = st.one_of(
    st.text(max_size=600),
    st.binary(max_size=300).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()),
    st.tuples(_starts, _ids).map(lambda keyset: forged(list(keyset))),
    _json.map(forged),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cursor=_cursors, splice=st.one_of(st.none(), st.tuples(st.integers(0, 200), st.text())))
async def test_any_cursor_answers_400_or_200_never_5xx(
    alice: Alice, cursor: str, splice: tuple[int, str] | None
) -> None:
    if splice is not None:  # or an issued cursor with something cut out or put in
        at, text = splice
        cursor = alice.issued[:at] + text + alice.issued[at + len(text) :]
    status, body = await alice.page(cursor)

    assert status in (200, 400), (status, body)
    if status == 400:
        assert_refused(status, body)
