"""Live updates: one Server-Sent Events stream per open page, resumable by `Last-Event-ID`."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from typing import Annotated

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import HeaderParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from adapters.prometheus import LIVE_STREAMS
from domain.errors import ConnectionNotFound, StorageUnavailable
from domain.model import ConnectionStatus, WebhookStatus
from entrypoints.live import CLOSING, RECHECK
from entrypoints.service.http.auth import Principal
from entrypoints.service.http.errors import invalid_parameter, problem_specs
from entrypoints.service.http.openapi import EventStreamOperation
from entrypoints.service.http.schemas import ConnectionResponse, MeetingResponse
from entrypoints.services import Services

HEARTBEAT_SECONDS = 15.0
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

    def __init__(self, expires_at: datetime | None) -> None:
        self._at = expires_at

    def left(self) -> float:
        """Seconds until the token expires."""
        if self._at is None:
            return math.inf
        return (self._at - datetime.now(tz=UTC)).total_seconds()

    def check(self) -> None:
        """Raises _TokenExpired once the token has expired (as PyJWT sees it: at `exp`)."""
        if self.left() <= 0:
            raise _TokenExpired


async def _stream(
    services: Services, user_id: str, after: int | None, deadline: _Deadline
) -> AsyncIterator[ServerSentEventMessage]:
    # Every read is followed by deadline.check() before what it found is sent: whatever was
    # committed after the token expired never leaves on this stream.
    hub = services.live_hub
    queue = hub.subscribe(user_id)  # before the first query: nothing can slip in between
    LIVE_STREAMS.set(hub.open_streams)
    try:
        start = await hub.shared(user_id, None, partial(services.meeting_changes, user_id, None))
        deadline.check()
        cursor = start.cursor if after is None else after
        yield ServerSentEventMessage(event="ready", data=_json({"cursor": cursor}))
        pending = after is not None
        connection = await _connection(services, user_id)
        deadline.check()
        yield connection
        while True:
            while pending:
                changes = await hub.shared(
                    user_id, cursor, partial(services.meeting_changes, user_id, cursor)
                )
                deadline.check()
                if changes.meetings:
                    cursor = changes.cursor
                    meetings = [MeetingResponse.of(m) for m in changes.meetings]
                    yield ServerSentEventMessage(
                        event="meetings", id=str(cursor), data=_json({"meetings": meetings})
                    )
                pending = changes.more
            if hub.closing:
                # The process is stopping: end the stream now rather than be cancelled by
                # the server; the page reconnects (to a sibling process) and resumes.
                return
            try:
                wait = min(HEARTBEAT_SECONDS, deadline.left())
                kind = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                deadline.check()
                yield ServerSentEventMessage(comment="ping")
                continue
            if kind == CLOSING:
                return
            pending = kind in ("meetings", RECHECK)
            if kind in ("connection", RECHECK):
                connection = await _connection(services, user_id)
                deadline.check()
                yield connection
    except _TokenExpired:
        # The page reconnects with a fresh token and its last id, and misses nothing.
        yield ServerSentEventMessage(event="expired", data=_json({"reason": "token_expired"}))
    except StorageUnavailable:
        # The page reconnects with its last id and misses nothing.
        yield ServerSentEventMessage(comment="storage unavailable, reconnect later")
    finally:
        hub.unsubscribe(user_id, queue)
        LIVE_STREAMS.set(hub.open_streams)


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

    Events: `ready` {cursor}; `meetings` {meetings: [...]} with an id to resume from;
    `connection` {connection | null}; comment lines as heartbeats. The stream ends when the
    bearer token expires, after an `expired` {reason} event: reconnect with a fresh token and
    `Last-Event-ID`.
    """
    after: int | None = None
    if last_event_id:
        # Not str.isdigit(): it takes "²" (a Latin-1 header byte), which int() refuses.
        if not _EVENT_ID.fullmatch(last_event_id):
            raise invalid_parameter(
                "Last-Event-ID", "must be an event id this stream sent", source="header"
            )
        after = int(last_event_id)
    return ServerSentEvent(
        _stream(services, principal.user_id, after, _Deadline(principal.expires_at)),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
