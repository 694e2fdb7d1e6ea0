"""GET /api/live's lean path (issue 17, DR-49) answers exactly as Litestar's route does, and
leaves the hub when the page goes away."""

from __future__ import annotations

import asyncio
import gc
import re
import time
import weakref
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from litestar import Litestar

from entrypoints.live import TIMER_GRID
from entrypoints.service.http.app import create_app
from entrypoints.service.http.routes import live as live_routes
from entrypoints.services import Services
from tests.support.core import build_core
from tests.support.http_app import (
    APP_ORIGIN,
    BASE_URL,
    Api,
    Readiness,
    booking,
    http_scope,
    make_config,
    make_token,
    services_of,
)

from litestar.testing import AsyncTestClient  # isort: skip


# A heartbeat on the wire: a comment line alone. An empty `data:` line beside it (Litestar's
# encoding of a comment) would make an EventSource dispatch an empty message at each one.
HEARTBEAT = b": ping\r\n\r\n"


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Page:
    """One `GET /api/live` over ASGI, as a browser tab: it stays until `leave()`."""

    def __init__(self, app: Litestar, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.heartbeats: list[float] = []
        self._left = asyncio.Event()
        scope = http_scope("GET", path, headers)
        self.task = asyncio.create_task(app(scope, self._receive, self._send))  # type: ignore[arg-type]
        self._asked = 0

    async def _receive(self) -> dict[str, Any]:
        self._asked += 1
        if self._asked == 1:  # a GET's (empty) body, as servers hand it over
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._left.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = sorted(
                (k.decode("latin-1").lower(), v.decode("latin-1"))
                for k, v in message.get("headers", [])
                if k.lower() != b"x-request-id"  # a new one per request
            )
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            if body == HEARTBEAT:  # its own send; the first comes at a random moment
                self.heartbeats.append(time.monotonic())
            else:
                self.body.extend(body)
            if not message.get("more_body", False):
                self._left.set()  # as servers do: `receive` says disconnect once it is over

    async def until(self, marker: bytes) -> None:
        """Until `marker` arrived, or the answer ended (a refusal)."""
        for _ in range(500):
            if marker in self.body or self.task.done():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {marker!r} in {bytes(self.body)!r}")

    async def leave(self) -> Answer:
        """The tab closes: the stream must end (within 5 s) and say what it sent."""
        self._left.set()
        await asyncio.wait_for(self.task, 5)
        return Answer(self.status, self.headers, bytes(self.body))


def _without_request_id(answer: Answer) -> Answer:
    """A refusal's body names its request, new each time."""
    body = re.sub(rb'"request_id":"[0-9a-f]{32}"', b'"request_id":""', answer.body)
    return Answer(answer.status, answer.headers, body)


def _bearer(user: str, expires_in: float = 600) -> bytes:
    return b"Bearer " + make_token(user, expires_in=expires_in).encode()


def _auth_headers() -> dict[str, list[bytes]]:
    """The Authorization headers pages send, minted now: a token minted as the module loads
    could expire before a late test uses it (a slow run of the whole suite took 13 minutes)."""
    return {
        "alice": [_bearer("alice")],
        "expired": [_bearer("alice", -120)],
        # Past `exp`, within the leeway: accepted, and the stream ends at once with `expired`.
        "expiring": [_bearer("alice", -5)],
        "none": [],
        "basic": [b"Basic YWxpY2U6cHc="],
        "api-key": [b"Bearer ccsk_notARealKey"],
        "garbage": [b"Bearer not.a.jwt"],
        "alice-then-bob": [_bearer("alice"), _bearer("bob")],
        "garbage-then-alice": [b"Bearer nope", _bearer("alice")],
    }


def _auth(name: str) -> list[bytes]:
    return _auth_headers()[name]


AUTH_NAMES = sorted(_auth_headers())
LAST_EVENT_ID = {
    "none": [],
    "zero": [b"0"],
    "one": [b"1"],
    "ahead": [b"99"],
    "word": [b"x"],
    "superscript": [b"\xb2"],
    "too-long": [b"1" * 19],
    "empty": [b""],
    "two": [b"1", b"x"],
}
ORIGIN = {
    "none": [],
    "empty": [b""],
    "app": [APP_ORIGIN.encode()],
    "evil": [b"https://evil.example"],
}


async def _sides(
    heartbeat: float | None = None,
) -> list[tuple[Api, Services, AsyncTestClient[Litestar]]]:
    """The app through its lean paths and through Litestar alone, each with alice connected
    (and each hub's heartbeat interval set, when given)."""
    sides = []
    for fast in (True, False):
        core = build_core()
        config = make_config()
        services = services_of(core, Readiness())
        if heartbeat is not None:
            services.live_hub.heartbeat_seconds = heartbeat
        app = create_app(services, config, fast_paths=fast)
        client = AsyncTestClient(app=app, base_url=BASE_URL)
        await client.__aenter__()
        api = Api(core=core, client=client, readiness=Readiness(), config=config)
        await api.connect("alice")
        sides.append((api, services, client))
    return sides


@settings(max_examples=40, deadline=None)
# The lean path's own cases, always: CORS for an allowed origin and none for an empty Origin
# header, a resumed stream, and one that ends at once (its token is past `exp`).
@example(pages=[("alice", "none", "app", "/api/live"), ("alice", "one", "empty", "/api/live")])
@example(pages=[("expiring", "none", "evil", "/api/live")])
@given(
    pages=st.lists(
        st.tuples(
            st.sampled_from(AUTH_NAMES),
            st.sampled_from(sorted(LAST_EVENT_ID)),
            st.sampled_from(sorted(ORIGIN)),
            st.sampled_from(["/api/live", "/api/live/"]),
        ),
        min_size=1,
        max_size=4,
    )
)
async def test_the_lean_path_answers_exactly_as_litestar_does(
    pages: list[tuple[str, str, str, str]],
) -> None:
    """Page by page, on two cores that start alike: the same status, headers (CORS ones too)
    and events, a meeting booked while the page is open included; each stream ends when its
    page goes away, and leaves the hub."""
    sides = await _sides()
    served = 0
    lean = live_routes._stream_until_hung_up

    async def counted(*args: Any) -> None:
        nonlocal served
        served += 1
        await lean(*args)

    live_routes._stream_until_hung_up = counted  # type: ignore[assignment]  # lean answers
    try:
        for n, (auth, last_event_id, origin, path) in enumerate(pages):
            headers = [(b"authorization", v) for v in _auth(auth)]
            headers += [(b"last-event-id", v) for v in LAST_EVENT_ID[last_event_id]]
            headers += [(b"origin", v) for v in ORIGIN[origin]]
            answers = []
            for api, services, client in sides:
                page = Page(client.app, path, headers)
                await page.until(b"event: connection")
                if not page.task.done():
                    delivered = await api.deliver(
                        booking(api.users["alice"], f"e{n}", f"i{n}"), user_id="alice"
                    )
                    assert delivered.status_code == 200, delivered.text
                    services.live_hub.ring("meetings", "alice")  # Postgres's doorbell, here
                    if last_event_id in ("none", "zero", "empty"):
                        await page.until(f"/e{n}".encode())
                    else:  # it resumes after a change id the new meeting may not pass
                        await asyncio.sleep(0.05)
                answers.append(_without_request_id(await page.leave()))
                assert services.live_hub.open_streams == 0
            assert answers[0] == answers[1]
            # Every stream Litestar opens at the exact path, the lean side opened itself (it
            # never fell back); `/api/live/` is Litestar's alone.
            assert served == (path == "/api/live" and answers[1].status == 200), answers[1]
            served = 0
    finally:
        live_routes._stream_until_hung_up = lean
        for _, _, client in sides:
            await client.__aexit__(None, None, None)


async def test_a_stream_that_opens_sends_ready_connection_and_new_meetings() -> None:
    """The comparison above could pass with both sides wrong: the lean side, read plainly."""
    (api, services, client), *_ = await _sides()
    try:
        page = Page(client.app, "/api/live", [(b"authorization", _auth("alice")[0])])
        await page.until(b"event: connection")
        assert page.status == 200
        assert ("content-type", "text/event-stream; charset=utf-8") in page.headers
        assert ("cache-control", "no-store") in page.headers
        assert services.live_hub.open_streams == 1
        await api.deliver(booking(api.users["alice"], "e9", "i9"), user_id="alice")
        services.live_hub.ring("meetings", "alice")
        await page.until(b"/e9")
        answer = await page.leave()
        events = [part for part in answer.body.split(b"\r\n\r\n") if part]
        assert events[0].startswith(b'event: ready\r\ndata: {"cursor":')
        # The reader learns the heartbeat's interval, for its watchdog (DR-54).
        assert events[0].endswith(b',"heartbeat":30}')
        assert events[1].startswith(b'event: connection\r\ndata: {"connection":{')
        assert events[2].startswith(b"id: ")
        assert b"event: meetings" in events[2]
        assert b"/e9" in events[2]
        assert services.live_hub.open_streams == 0
    finally:
        await client.__aexit__(None, None, None)


async def test_a_quiet_stream_beats_both_ways_and_the_first_beat_is_spread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing happens: each stream sends bare comment lines, the first at the stream's own
    random point of the interval (pages that open together must not beat together), then one
    per interval; through the lean path and Litestar's route alike."""
    phases: list[float] = []

    def first_beat(interval: float) -> float:
        assert interval == 1.0
        phases.append(0.05)
        return 0.05

    monkeypatch.setattr(live_routes, "_first_heartbeat", first_beat)
    sides = await _sides(heartbeat=1.0)
    try:
        for _, services, client in sides:
            page = Page(client.app, "/api/live", [(b"authorization", _auth("alice")[0])])
            await page.until(b"event: connection")
            opened = time.monotonic()
            for _ in range(300):
                if len(page.heartbeats) >= 2:
                    break
                await asyncio.sleep(0.01)
            answer = await page.leave()
            assert answer.status == 200
            assert len(page.heartbeats) >= 2, answer.body
            assert b"ping" not in answer.body  # every beat was sent alone, as HEARTBEAT
            first, second = page.heartbeats[:2]
            assert first - opened < 0.6  # at its phase, not a whole interval in
            # then an interval between beats, less at most the timers' grid (entrypoints/live)
            assert second - first >= 1.0 - TIMER_GRID
            assert services.live_hub.open_streams == 0
        assert phases == [0.05, 0.05]  # a phase per stream, not per beat
    finally:
        for _, _, client in sides:
            await client.__aexit__(None, None, None)


async def test_an_ended_stream_is_freed_at_once_not_left_to_the_cyclic_collector() -> None:
    """Thousands of pages closing together (a deploy) must not leave thousands of connections
    for a full collection to find: each ended stream's request task is freed by reference
    counting alone, as soon as nothing else holds it."""
    (_, services, client), *_ = await _sides()
    gc.collect()
    gc.disable()
    try:
        pages = [
            Page(client.app, "/api/live", [(b"authorization", _auth("alice")[0])])
            for _ in range(20)
        ]
        for page in pages:
            await page.until(b"event: connection")
        assert services.live_hub.open_streams == 20
        for page in pages:
            await page.leave()
        await asyncio.sleep(0.05)  # the hang-up listeners' callbacks run
        tasks = [weakref.ref(page.task) for page in pages]
        del pages, page
        assert [task for task in tasks if task() is not None] == []
    finally:
        gc.enable()
        await client.__aexit__(None, None, None)


async def test_rings_that_send_nothing_do_not_put_the_heartbeat_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A doorbell that finds nothing new sends nothing: the heartbeat still comes within its
    interval of the last write (a page's watchdog takes long silence for a dead link)."""
    monkeypatch.setattr(live_routes, "_first_heartbeat", lambda interval: interval)
    (_, services, client), *_ = await _sides(heartbeat=0.6)
    try:
        page = Page(client.app, "/api/live", [(b"authorization", _auth("alice")[0])])
        await page.until(b"event: connection")
        opened = time.monotonic()
        while time.monotonic() - opened < 1.5:
            services.live_hub.ring("meetings", "alice")  # nothing new to read
            await asyncio.sleep(0.1)
        answer = await page.leave()
        assert answer.body.count(b"event: meetings") == 0
        assert len(page.heartbeats) >= 2, page.heartbeats  # at about 0.6 s and 1.2 s
    finally:
        await client.__aexit__(None, None, None)


async def test_a_stream_ends_at_its_tokens_end_with_no_heartbeat_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The token ends before the next heartbeat is due: the stream wakes at the token's end
    exactly (not at an earlier point of the heartbeats' grid, which sent one more ping just
    before `expired`), says `expired`, and ends; through either path."""
    monkeypatch.setattr(live_routes, "_first_heartbeat", lambda interval: interval)
    sides = await _sides(heartbeat=10.0)
    try:
        for _, _, client in sides:
            token = b"Bearer " + make_token("alice", expires_in=2).encode()
            page = Page(client.app, "/api/live", [(b"authorization", token)])
            await page.until(b"event: connection")
            await page.until(b"event: expired")
            answer = await page.leave()
            assert page.heartbeats == [], answer.body
            assert answer.body.endswith(
                b'event: expired\r\ndata: {"reason":"token_expired"}\r\n\r\n'
            )
    finally:
        for _, _, client in sides:
            await client.__aexit__(None, None, None)
