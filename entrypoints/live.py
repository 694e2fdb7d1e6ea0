"""Fan-out of change doorbells to the event streams open in this process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection

import structlog

log = structlog.get_logger(__name__)

RECHECK = "recheck"
# Rung once when the process stops: every open stream ends at once, cleanly (its page
# reconnects to a sibling process and resumes), instead of being cancelled mid-wait.
CLOSING = "closing"


class LiveHub:
    """Per user, the queues of that user's open streams; a full queue already rings."""

    def __init__(self, queue_size: int = 8) -> None:
        self._streams: dict[str, set[asyncio.Queue[str]]] = defaultdict(set)
        self._queue_size = queue_size
        self._closing = False
        # Users watching here whose connection the worker polls (no webhooks on their plan),
        # as their streams last read it; and those among them not yet marked (DR-42).
        self._polled: set[str] = set()
        self._newly_polled: set[str] = set()
        # Users whose page just read an active connection: its grant is checked soon (issue 15).
        self._opened: set[str] = set()
        self.watching_changed = asyncio.Event()

    def subscribe(self, user_id: str) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(self._queue_size)
        self._streams[user_id].add(queue)
        return queue

    def unsubscribe(self, user_id: str, queue: asyncio.Queue[str]) -> None:
        streams = self._streams.get(user_id)
        if streams is not None:
            streams.discard(queue)
            if not streams:
                del self._streams[user_id]
                self._polled.discard(user_id)
                self._newly_polled.discard(user_id)

    def opened(self, user_id: str) -> None:
        """A stream of `user_id` read an active connection: have its grant checked soon, so a
        revoked one shows as `needs_reauth` while the user looks (rate limited per user by the
        statement itself)."""
        if user_id in self._streams:
            self._opened.add(user_id)
            self.watching_changed.set()

    def take_opened(self) -> set[str]:
        opened, self._opened = self._opened, set()
        return opened

    def polled(self, user_id: str, polled: bool) -> None:
        """A stream of `user_id` read the connection: whether the worker polls it (free plan).

        A user newly seen as polled wakes the marker, which asks for a sync at once."""
        if user_id not in self._streams:
            return
        if not polled:
            self._polled.discard(user_id)
            self._newly_polled.discard(user_id)
        elif user_id not in self._polled:
            self._polled.add(user_id)
            self._newly_polled.add(user_id)
            self.watching_changed.set()

    def polled_users(self) -> frozenset[str]:
        """The users watching here whose connection is polled."""
        return frozenset(self._polled)

    def take_newly_polled(self) -> frozenset[str]:
        """The polled users not yet marked since they started watching; forgets them."""
        taken = frozenset(self._newly_polled)
        self._newly_polled.clear()
        self.watching_changed.clear()
        return taken

    def ring(self, kind: str | None, user_id: str | None) -> None:
        """A change of `kind` for `user_id`; (None, None) asks every stream to re-check."""
        if user_id is None:
            targets = [q for queues in self._streams.values() for q in queues]
            kind = RECHECK
        else:
            targets = list(self._streams.get(user_id, ()))
        for queue in targets:
            # A full queue has a doorbell waiting already; one more would add nothing.
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(kind or RECHECK)

    @property
    def closing(self) -> bool:
        """True once `close()` was called: streams end instead of waiting for changes."""
        return self._closing

    def close(self) -> None:
        """Ask every open stream to end (the process is stopping)."""
        self._closing = True
        for queue in [q for queues in self._streams.values() for q in queues]:
            # A full queue wakes its stream anyway, which then sees `closing`.
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(CLOSING)

    @property
    def open_streams(self) -> int:
        return sum(len(q) for q in self._streams.values())


# How often a process with polled users watching asks again, and how long it waits after a
# mark before the next (stream opens in a burst become one statement).
WATCHED_MARK_SECONDS = 15.0
WATCHED_SETTLE_SECONDS = 1.0
Mark = Callable[[Collection[str]], Awaitable[int]]


async def mark_watched(
    hub: LiveHub,
    mark: Mark,
    *,
    check: Mark | None = None,
    every: float = WATCHED_MARK_SECONDS,
    settle: float = WATCHED_SETTLE_SECONDS,
) -> None:
    """While users watch here, keep their free-plan connections due soon (DR-42), for ever.

    Every `every` seconds one `mark` for all the polled users watching in this process (none:
    no statement); a user who starts watching is marked within `settle`, with whoever else
    started meanwhile. A failed mark is logged and tried again at the next tick.
    """
    next_tick = time.monotonic() + every
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                hub.watching_changed.wait(), max(next_tick - time.monotonic(), 0.0)
            )
        opened = hub.take_opened()
        if opened and check is not None:
            try:
                await check(opened)
            except Exception as exc:  # the next page opening asks again
                log.warning("live.grants_not_checked", users=len(opened), error=type(exc).__name__)
        users = hub.take_newly_polled()
        if time.monotonic() >= next_tick:
            users = hub.polled_users()
            next_tick = time.monotonic() + every
        if users:
            try:
                await mark(users)
            except Exception as exc:  # the next tick asks again
                log.warning("live.watched_not_marked", users=len(users), error=type(exc).__name__)
        await asyncio.sleep(settle)
