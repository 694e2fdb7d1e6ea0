"""Live updates: one Server-Sent Events stream per open page, resumable by `Last-Event-ID`."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import time
from collections.abc import AsyncGenerator, Awaitable
from datetime import datetime
from functools import partial
from typing import Annotated, Final

import msgspec
from litestar import get
from litestar.config.cors import CORSConfig
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.exceptions import ValidationException
from litestar.params import HeaderParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from adapters.prometheus import LIVE_STREAMS
from domain.errors import ConnectionNotFound, NotAuthenticated, StorageUnavailable
from domain.model import ConnectionStatus, WebhookStatus
from entrypoints.live import CLOSING, RECHECK
from entrypoints.service.http.auth import JwtAuthenticator, Principal, principal_of
from entrypoints.service.http.errors import invalid_parameter, problem_specs
from entrypoints.service.http.jwks import JwksUnavailable
from entrypoints.service.http.openapi import EventStreamOperation
from entrypoints.service.http.schemas import ConnectionResponse, MeetingResponse
from entrypoints.services import Services

# An event id this stream sent; empty (as absent) starts from now.
_EVENT_ID = re.compile(r"^[0-9]{0,18}$")


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode("utf-8")


async def _connection(services: Services, user_id: str) -> ServerSentEventMessage:
    """The `connection` event; the hub learns whether the worker polls this connection (a free
    plan: while the user watches, it is polled often, DR-42)."""
    polled = False
    try:
        view = await services.connection_status(user_id)
        body: object = {"connection": ConnectionResponse.of(view)}
        polled = (
            view.status is ConnectionStatus.ACTIVE
            and view.webhook_status is WebhookStatus.UNAVAILABLE_PLAN
        )
        if view.status is ConnectionStatus.ACTIVE:  # a revoked grant shows while they look
            services.live_hub.opened(user_id)
    except ConnectionNotFound:
        body = {"connection": None}
    services.live_hub.polled(user_id, polled)
    return ServerSentEventMessage(event="connection", data=_json(body))


class _TokenExpired(Exception):
    """The stream's bearer token has expired: nothing more may be sent on it."""


class _Deadline:
    """The end of a stream's bearer token (None: the token names none, the stream has none)."""

    __slots__ = ("_at",)

    def __init__(self, expires_at: datetime | None) -> None:
        # As a POSIX timestamp: time.time() against it is a fraction of datetime.now(UTC)'s
        # cost, and every heartbeat asks (issue 17).
        self._at = math.inf if expires_at is None else expires_at.timestamp()

    def left(self) -> float:
        """Seconds until the token expires."""
        return self._at - time.time()

    def check(self) -> None:
        """Raises _TokenExpired once the token has expired (as PyJWT sees it: at `exp`)."""
        if self.left() <= 0:
            raise _TokenExpired


class _Ping(ServerSentEventMessage):
    """The heartbeat: a comment line only (`data=None`: Litestar's default, an empty `data:`
    line, makes an EventSource dispatch an empty `message` event at every heartbeat), its
    bytes built once, not at every heartbeat."""

    def encode(self) -> bytes:
        return _PING_BYTES


_PING: Final = _Ping(data=None, comment="ping")
_PING_BYTES: Final = ServerSentEventMessage.encode(_PING)


async def _stream(
    services: Services, user_id: str, after: int | None, deadline: _Deadline
) -> AsyncGenerator[ServerSentEventMessage, None]:
    # Every read is followed by deadline.check() before what it found is sent: whatever was
    # committed after the token expired never leaves on this stream.
    hub = services.live_hub
    doorbell = hub.subscribe(user_id)  # before the first query: nothing can slip in between
    LIVE_STREAMS.set(hub.open_streams)
    try:
        # Meetings' doorbells ring only for users some process listens for: this process is
        # registered for the user before the stream reads anything (DR-57).
        await hub.registered(user_id)
        # What a step read is not kept by this frame while the stream waits (issue 17): the
        # helpers below read, check the deadline and build the event; the frame yields it.
        cursor = await _start_cursor(services, user_id, after, deadline)
        beat = hub.heartbeat_seconds
        yield ServerSentEventMessage(
            event="ready", data=_json({"cursor": cursor, "heartbeat": beat})
        )
        pending = after is not None
        yield await _connection_event(services, user_id, deadline)
        # When the next heartbeat is due (the loop's clock), counted from the last write: a
        # ring that sends nothing must not put it off. The first is at a random point.
        clock = asyncio.get_running_loop().time
        beat_at = clock() + _first_heartbeat(beat)
        while True:
            while pending:
                event, cursor, pending = await _meetings_after(services, user_id, cursor, deadline)
                if event is not None:
                    yield event
                    beat_at = clock() + beat
                del event
            if hub.closing:
                # The process is stopping: end the stream now rather than be cancelled by
                # the server; the page reconnects (to a sibling process) and resumes.
                return
            beat_in, expires_in = beat_at - clock(), deadline.left()
            if expires_in < beat_in:  # the token ends first: wake at its end exactly
                kinds = await doorbell.wait(expires_in, exact=True)
                if not kinds:
                    deadline.check()  # else the wall clock lagged the loop's: look again
                    continue
            else:
                kinds = await doorbell.wait(beat_in)
                if not kinds:
                    deadline.check()
                    yield _PING
                    beat_at = clock() + beat
                    continue
            if CLOSING in kinds:
                return
            pending = not kinds.isdisjoint(("meetings", RECHECK))
            if not kinds.isdisjoint(("connection", RECHECK)):
                yield await _connection_event(services, user_id, deadline)
                beat_at = clock() + beat
    except _TokenExpired:
        # The page reconnects with a fresh token and its last id, and misses nothing.
        yield ServerSentEventMessage(event="expired", data=_json({"reason": "token_expired"}))
    except StorageUnavailable:
        # The page reconnects with its last id and misses nothing.
        yield ServerSentEventMessage(data=None, comment="storage unavailable, reconnect later")
    finally:
        hub.unsubscribe(user_id, doorbell)
        LIVE_STREAMS.set(hub.open_streams)


def _first_heartbeat(interval: float) -> float:
    """When a new stream's first heartbeat is due: at a random point of the interval. Pages
    that open together (after a deploy, say) would otherwise beat together for as long as they
    stay open, a burst at every interval instead of an even trickle (issue 17)."""
    return interval * random.random()


async def _start_cursor(
    services: Services, user_id: str, after: int | None, deadline: _Deadline
) -> int:
    start = await services.live_hub.shared(
        user_id, None, partial(services.meeting_changes, user_id, None)
    )
    deadline.check()
    return start.cursor if after is None else after


async def _connection_event(
    services: Services, user_id: str, deadline: _Deadline
) -> ServerSentEventMessage:
    event = await _connection(services, user_id)
    deadline.check()
    return event


async def _meetings_after(
    services: Services, user_id: str, cursor: int, deadline: _Deadline
) -> tuple[ServerSentEventMessage | None, int, bool]:
    """The `meetings` event for what changed after `cursor` (None: nothing did), the cursor
    after it, and whether more changes wait."""
    data, after, more = await services.live_hub.shared(
        user_id, cursor, partial(_changes_json, services, user_id, cursor)
    )
    deadline.check()
    if data is None:
        return None, cursor, more
    return ServerSentEventMessage(event="meetings", id=str(after), data=data), after, more


async def _changes_json(
    services: Services, user_id: str, cursor: int
) -> tuple[str | None, int, bool]:
    """What changed after `cursor` as the event's data (None: nothing), the cursor after it,
    and whether more wait: read and encoded once for all the user's streams that share the
    read, not once per stream."""
    changes = await services.meeting_changes(user_id, cursor)
    if not changes.meetings:
        return None, changes.cursor, changes.more
    meetings = [MeetingResponse.of(m) for m in changes.meetings]
    return _json({"meetings": meetings}), changes.cursor, changes.more


@get(
    "/api/live",
    operation_id="liveUpdates",
    tags=["live"],
    responses=problem_specs(400, 401),
    operation_class=EventStreamOperation,
)
async def live_updates(
    services: NamedDependency[Services],
    principal: NamedDependency[Principal],
    last_event_id: Annotated[
        str,
        HeaderParameter(
            name="Last-Event-ID",
            description="Resume after this event id",
            # Documented only: the handler checks it and names the header when it is wrong.
            schema_extra={"pattern": _EVENT_ID.pattern},
        ),
    ] = "",
) -> ServerSentEvent:
    """Changes to the user's meetings and connection as they happen (text/event-stream).

    Events: `ready` {cursor, heartbeat} (`heartbeat`: the interval of the comment lines, in
    seconds); `meetings` {meetings: [...]} with an id to resume from;
    `connection` {connection | null}; comment lines as heartbeats. The stream ends when the
    bearer token expires, after an `expired` {reason} event: reconnect with a fresh token and
    `Last-Event-ID`.
    """
    return ServerSentEvent(
        _stream(
            services, principal.user_id, _after(last_event_id), _Deadline(principal.expires_at)
        ),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _after(last_event_id: str) -> int | None:
    """The event id to resume after (None: from now), or a 400 problem naming the header."""
    if not last_event_id:
        return None
    # Not str.isdigit(): it takes "²" (a Latin-1 header byte), which int() refuses.
    if not _EVENT_ID.fullmatch(last_event_id):
        raise invalid_parameter(
            "Last-Event-ID", "must be an event id this stream sent", source="header"
        )
    return int(last_event_id)


# What Litestar's ServerSentEvent sends with the route's own headers; tests compare.
_STREAM_HEADERS: Final = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
    (b"connection", b"keep-alive"),
)


class LiveFastPath:
    """The live stream without Litestar's layers, which kept about 160 objects (30 KB) alive
    per open stream, and a thread hop as each one opened (issue 17, DR-49).

    An ASGI layer inside the request context (request id, log line, security headers), like
    routes/webhooks.py's WebhookFastPath: it takes `GET /api/live` when the caller is signed
    in and any `Last-Event-ID` is valid, and streams the same `_stream` as the route above,
    with the same headers (CORS ones too, for a front end on another origin). Everything else,
    every refusal included, goes to Litestar, which answers as it always did; the route stays
    there for the OpenAPI document and for tracing. tests/http/test_http_live.py runs the same
    requests both ways and compares the answers.
    """

    def __init__(
        self, app: ASGIApp, services: Services, auth: JwtAuthenticator, cors: CORSConfig
    ) -> None:
        self.app = app
        self._services = services
        self._auth = auth
        self._cors = cors

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function: a coroutine frame less under every request and open stream.
        if scope["type"] == ScopeType.HTTP and scope["method"] == "GET" and scope["path"] == _LIVE:
            return self._live(scope, receive, send)
        return self.app(scope, receive, send)

    async def _live(self, scope: Scope, receive: Receive, send: Send) -> None:
        opened = await self._open(scope)
        if opened is None:  # Litestar says what is wrong, exactly as it always did
            await self.app(scope, receive, send)
            return
        events, headers = opened
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 200,
            "headers": headers,
        }
        await send(start)
        del start, headers, opened  # kept by this frame for as long as the stream is open
        await _stream_until_hung_up(events, receive, send)
        end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(end)

    async def _open(
        self, scope: Scope
    ) -> tuple[AsyncGenerator[ServerSentEventMessage, None], list[tuple[bytes, bytes]]] | None:
        """The stream's events and response headers; None when Litestar must answer."""
        # Of a repeated header the first counts, as Litestar's `headers.get` takes it.
        found: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in _READ and name not in found:
                found[name] = value.decode("latin-1")
        try:
            principal = await principal_of(found.get(b"authorization"), self._auth)
            after = _after(found.get(b"last-event-id", ""))
        except _REFUSALS:  # only these: a bug here must show, not hide behind Litestar
            return None
        headers = list(_STREAM_HEADERS)
        origin = found.get(b"origin")
        if origin:  # as Litestar's CORS middleware: an empty Origin is none
            headers += self._cors_headers(origin)
        deadline = _Deadline(principal.expires_at)
        return _stream(self._services, principal.user_id, after, deadline), headers

    def _cors_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        """What Litestar's CORS middleware adds to an answer for `origin` (a simple request)."""
        cors = self._cors
        headers = {k.lower(): v for k, v in cors.simple_headers.items()}
        if cors.is_origin_allowed(origin) and not cors.is_allow_all_origins:
            headers["access-control-allow-origin"] = origin
            headers["vary"] = "Origin"
        headers["access-control-allow-headers"] = ", ".join(sorted(set(cors.allow_headers)))
        headers["access-control-allow-methods"] = ", ".join(sorted(set(cors.allow_methods)))
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


_LIVE: Final = "/api/live"
# What `_open` leaves Litestar to answer: no caller, a bad Last-Event-ID, no JWKS to check with.
_REFUSALS: Final = (NotAuthenticated, ValidationException, JwksUnavailable)
_READ: Final = frozenset({b"authorization", b"last-event-id", b"origin"})


async def _stream_until_hung_up(
    events: AsyncGenerator[ServerSentEventMessage, None], receive: Receive, send: Send
) -> None:
    """Send `events` until they end or the client hangs up (ASGI says so through `receive`
    only: the server drops what is sent after it)."""
    task = asyncio.current_task()
    assert task is not None
    hang_up = _HangUp(task, receive)
    try:
        # Closed here, not when collected: a hang-up between two events leaves the hub at once.
        async with contextlib.aclosing(events):
            while True:
                try:
                    chunk = (await anext(events)).encode()
                except StopAsyncIteration:
                    break
                await send(_body(chunk))
                del chunk  # not kept while the stream waits for its next event
    except asyncio.CancelledError:
        # Ours alone is swallowed: a cancel from outside (the server stopping) goes on.
        if not hang_up.heard or task.uncancel() > 0:
            raise
    finally:
        hang_up.stop()


class _HangUp:
    """Cancels the stream's task when the client hangs up.

    The server's own `receive()` is the listening task, no coroutine of ours around it (issue
    17). Not a closure: one that hands itself to `add_done_callback` refers to itself, a cycle
    that left each ended stream (and the server's connection object it held) to the cyclic
    collector, about 35 objects a stream: a 0.2 s collection after 5,000 streams closed.
    """

    __slots__ = ("_listener", "_listening", "_receive", "_task", "heard")

    def __init__(self, task: asyncio.Task[object], receive: Receive) -> None:
        self._task = task
        self._receive = receive
        self.heard = False  # the client hung up
        self._listening = True
        self._listener = self._listen()

    def _listen(self) -> asyncio.Future[ReceiveMessage]:
        listener = asyncio.ensure_future(self._receive())
        listener.add_done_callback(self._heard)
        return listener

    def _heard(self, message: asyncio.Future[ReceiveMessage]) -> None:
        if message.cancelled() or not self._listening:  # the stream ended before this was heard
            return
        if message.exception() is None and message.result()["type"] != "http.disconnect":
            self._listener = self._listen()  # a request body's part: listen on
            return
        self.heard = True
        self._task.cancel()

    def stop(self) -> None:
        self._listening = False
        self._listener.cancel()


def _body(chunk: bytes) -> HTTPResponseBodyEvent:
    return {"type": "http.response.body", "body": chunk, "more_body": True}
