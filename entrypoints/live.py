"""Fan-out of change doorbells to the event streams open in this process."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from domain.errors import StorageUnavailable

log = structlog.get_logger(__name__)

RECHECK = "recheck"
# Rung once when the process stops: every open stream ends at once, cleanly (its page
# reconnects to a sibling process and resumes), instead of being cancelled mid-wait.
CLOSING = "closing"
T = TypeVar("T")


async def _run(read: Callable[[], Awaitable[T]]) -> T:
    return await read()


_NONE_RUNG: frozenset[str] = frozenset()


class Doorbell:
    """What has rung for one open stream since it last looked, and the stream's wake-up.

    Not an asyncio.Queue: that holds three deques and an Event, about 3 KB per open stream
    (issue 17). A stream wants only which kinds rang since it looked, each once.
    """

    __slots__ = ("_kinds", "_waiter")

    def __init__(self) -> None:
        self._kinds: frozenset[str] = _NONE_RUNG  # shared while nothing rang: no set each
        self._waiter: asyncio.Future[None] | None = None

    def ring(self, kind: str) -> None:
        if kind not in self._kinds:
            self._kinds = self._kinds | {kind}
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, at_most: float, *, exact: bool = False) -> frozenset[str]:
        """The kinds rung since the last call, once at least one has; an empty set if none
        rang within `at_most` seconds: less by up to TIMER_GRID (see `_on_grid`), unless
        `exact`.

        A timer wakes the waiter, rather than asyncio.timeout around the wait (hence no
        `timeout` parameter, ASYNC109), which cancels the waiting task and raises through it
        at every heartbeat of an idle stream (issue 17).
        """
        if not self._kinds:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            now = loop.time()
            due = now + at_most if exact else _on_grid(now, at_most)
            timer = loop.call_at(due, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        kinds, self._kinds = self._kinds, _NONE_RUNG
        return kinds


# Timers are due on this grid (seconds of the loop's clock), never later than asked: those of
# many streams then fall due together and the loop wakes once for all of them, not once each.
TIMER_GRID = 0.25


def _on_grid(now: float, at_most: float) -> float:
    """The last grid point within `at_most` seconds of `now` (the exact time if none is)."""
    due = now + at_most
    aligned = math.floor(due / TIMER_GRID) * TIMER_GRID
    return aligned if aligned > now else due


def _heard(waiter: asyncio.Future[None]) -> None:
    """A registration's outcome is heard even when every stream that waited for it has gone."""
    if not waiter.cancelled():
        waiter.exception()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass(frozen=True)
class _Flight:
    """A read under way for one user and cursor, and the doorbells rung before it began."""

    rung: tuple[int, int]
    task: asyncio.Future[Any]


# How often an idle stream sends a comment line (LIVE_HEARTBEAT_SECONDS), so that proxies and
# load balancers do not take it for dead: they commonly close a response that has sent nothing
# for 55-60 s. Each beat costs the process CPU (and the reader too): with 10,000 streams open,
# beats every 15 s were a large part of what the streams cost the webhook path (DR-54).
DEFAULT_HEARTBEAT_SECONDS = 30


class LiveHub:
    """Per user, the doorbells of that user's open streams."""

    def __init__(self, heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS) -> None:
        if heartbeat_seconds <= 0:
            raise ValueError("heartbeat_seconds must be positive")
        # Told to each stream's reader in its `ready` event, so that its watchdog fits.
        self.heartbeat_seconds = heartbeat_seconds
        self._streams: dict[str, set[Doorbell]] = defaultdict(set)
        self._closing = False
        # Users watching here whose connection the worker polls (no webhooks on their plan),
        # as their streams last read it; and those among them not yet marked (DR-42).
        self._polled: set[str] = set()
        self._newly_polled: set[str] = set()
        # Users whose page just read an active connection: its grant is checked soon (issue 15).
        self._opened: set[str] = set()
        self.watching_changed = asyncio.Event()
        # Doorbells rung per user watching here, and re-checks of everyone: a read that began
        # after the last of them has seen every change they announced (issue 17).
        self._rung: dict[str, int] = {}
        self._rechecks = 0
        self._flights: dict[tuple[str, int | None], _Flight] = {}
        self.reads = 0  # reads made through `shared` (for tests and figures)
        # The users this process is registered as listening for (`live_watchers`, DR-57), and
        # those whose first stream here waits to be; `keep_registered` does both, and until it
        # runs (tests, a hub without a database) no stream waits.
        self.registry = False
        self.registry_wanted = asyncio.Event()
        self._registered: set[str] = set()
        self._registering: dict[str, asyncio.Future[None]] = {}
        self._taken: set[str] = set()  # registrations under way

    def subscribe(self, user_id: str) -> Doorbell:
        doorbell = Doorbell()
        self._streams[user_id].add(doorbell)
        return doorbell

    def unsubscribe(self, user_id: str, doorbell: Doorbell) -> None:
        streams = self._streams.get(user_id)
        if streams is not None:
            streams.discard(doorbell)
            if not streams:
                del self._streams[user_id]
                # Its doorbell count starts again from 0: a read still under way could look
                # current to a stream that opens next, so none may join it.
                self._rung.pop(user_id, None)
                for key in [key for key in self._flights if key[0] == user_id]:
                    del self._flights[key]
                self._polled.discard(user_id)
                self._newly_polled.discard(user_id)

    async def registered(self, user_id: str) -> None:
        """Returns once this process is registered as listening for `user_id`'s doorbells: a
        stream's first read must come after it, or a meeting written meanwhile could ring
        nobody (DR-57). Raises StorageUnavailable if the registration failed."""
        if not self.registry or user_id in self._registered:
            return
        waiter = self._registering.get(user_id)
        if waiter is None:
            waiter = self._registering[user_id] = asyncio.get_running_loop().create_future()
            waiter.add_done_callback(_heard)
            self.registry_wanted.set()
        await asyncio.shield(waiter)

    def waiting_registrations(self) -> list[str]:
        """The users whose streams wait for their registration."""
        return list(self._registering)

    def take_registrations(self) -> list[str]:
        """The users whose streams wait for a registration not yet under way; now under way."""
        due = [u for u in self._registering if u not in self._taken]
        self._taken.update(due)
        return due

    def registration_done(self, user_ids: Collection[str], error: BaseException | None) -> None:
        """`user_ids` were registered (`error` None), or could not be: their streams go on."""
        for user_id in user_ids:
            self._taken.discard(user_id)
            waiter = self._registering.pop(user_id, None)
            if error is None:
                self._registered.add(user_id)
            if waiter is not None and not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    def unwatched_registrations(self) -> set[str]:
        """Registered users with no stream here any more; forgotten as of now (a stream of
        theirs that opens from here on waits for a new registration)."""
        gone = {u for u in self._registered if u not in self._streams}
        self._registered -= gone
        return gone

    def registered_users(self) -> set[str]:
        return set(self._registered)

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
            targets = [d for doorbells in self._streams.values() for d in doorbells]
            kind = RECHECK
            self._rechecks += 1
        else:
            targets = list(self._streams.get(user_id, ()))
            if targets:
                self._rung[user_id] = self._rung.get(user_id, 0) + 1
        for doorbell in targets:
            doorbell.ring(kind or RECHECK)

    async def shared(self, user_id: str, cursor: int | None, read: Callable[[], Awaitable[T]]) -> T:
        """`read()` of `user_id`'s changes after `cursor`, or the same read already under way.

        A user's streams here are woken together and mostly stand at the same cursor: one read
        serves them all, so a delivery costs one read per process, not one per stream (issue
        17). A read is shared only if no doorbell rang for the user (nor a re-check for all)
        since it began: it then sees every change any of its callers was told of.
        """
        rung = (self._rung.get(user_id, 0), self._rechecks)
        key = (user_id, cursor)
        flight = self._flights.get(key)
        if flight is None or flight.rung != rung:
            self.reads += 1
            # The read serves every stream of the user here: it carries none's log context.
            task = asyncio.create_task(_run(read), context=contextvars.Context())
            flight = _Flight(rung, task)
            self._flights[key] = flight
            flight.task.add_done_callback(lambda _: self._landed(key, flight))
        answer: T = await asyncio.shield(flight.task)
        return answer

    def _landed(self, key: tuple[str, int | None], flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # each caller hears it; none left is no warning

    @property
    def closing(self) -> bool:
        """True once `close()` was called: streams end instead of waiting for changes."""
        return self._closing

    def close(self) -> None:
        """Ask every open stream to end (the process is stopping)."""
        self._closing = True
        for doorbell in [d for doorbells in self._streams.values() for d in doorbells]:
            doorbell.ring(CLOSING)

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


# How often a process refreshes its rows in `live_watchers` and forgets the users nobody
# watches here any more; rows not refreshed for STALE_WATCHERS (a dead process's) are purged.
REGISTRY_REFRESH_SECONDS = 60.0


class Watchers(Protocol):
    async def add(self, user_ids: Collection[str]) -> None: ...
    async def busy(self, user_ids: Collection[str]) -> set[str]: ...
    async def wait_for_writes(self, user_id: str) -> None: ...
    async def refresh(self, user_ids: Collection[str]) -> set[str]: ...
    async def forget(self, user_ids: Collection[str]) -> None: ...
    async def purge(self) -> int: ...


# At most this many users' registrations wait for a write under way at once, each holding a
# pooled connection (the webhook path needs the rest).
WAITING_REGISTRATIONS = 4


async def keep_registered(
    hub: LiveHub, watchers: Watchers, *, every: float = REGISTRY_REFRESH_SECONDS
) -> None:
    """This process's rows in `live_watchers` (DR-57), for ever: the users whose first stream
    here waits, registered together as soon as they ask; every `every` seconds the rows of
    the users still watched here refreshed, those of users gone forgotten, and dead
    processes' rows purged. One task writes the rows, one statement at a time, so a user's
    registration never races its removal. A user with a write under way is waited for apart
    (its streams only). A user whose row had gone (purged while this process stalled) is
    registered again and its streams look again: at once, or, with a write under way, once
    it ended, waited for apart like a registration."""
    hub.registry = True
    next_refresh = time.monotonic() + every
    waits: set[asyncio.Task[None]] = set()
    limit = asyncio.Semaphore(WAITING_REGISTRATIONS)

    def apart(wait: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(wait)
        waits.add(task)
        task.add_done_callback(waits.discard)

    try:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    hub.registry_wanted.wait(), max(next_refresh - time.monotonic(), 0.0)
                )
            hub.registry_wanted.clear()
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + every
                await _refresh_registrations(
                    hub,
                    watchers,
                    lambda user_id: apart(_look_after_writes(hub, watchers, user_id, limit)),
                )
            due = hub.take_registrations()
            if not due:
                continue
            try:
                await watchers.add(due)
                busy = await watchers.busy(due)
            except Exception as exc:  # their streams end; the pages come back
                log.warning("live.not_registered", users=len(due), error=type(exc).__name__)
                hub.registration_done(due, StorageUnavailable("the database is unavailable"))
                continue
            hub.registration_done([u for u in due if u not in busy], None)
            for user_id in busy:
                apart(_after_writes(hub, watchers, user_id, limit))
    finally:
        hub.registry = False
        for task in list(waits):
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        stopping = StorageUnavailable("the process is stopping")
        hub.registration_done(hub.waiting_registrations(), stopping)


async def _after_writes(
    hub: LiveHub, watchers: Watchers, user_id: str, limit: asyncio.Semaphore
) -> None:
    """`user_id`'s registration, once the write of theirs under way has ended."""
    try:
        async with limit:
            await watchers.wait_for_writes(user_id)
    except Exception as exc:  # its streams end; the pages come back
        log.warning("live.not_registered", users=1, error=type(exc).__name__)
        hub.registration_done([user_id], StorageUnavailable("a write of the user is under way"))
    else:
        hub.registration_done([user_id], None)


async def _look_after_writes(
    hub: LiveHub, watchers: Watchers, user_id: str, limit: asyncio.Semaphore
) -> None:
    """`user_id`'s streams look again once the write of theirs under way has ended (their
    row was lost, and is back)."""
    try:
        async with limit:
            await watchers.wait_for_writes(user_id)
    except Exception as exc:  # they look now all the same, the best there is
        log.warning("live.lost_user_not_waited_for", error=type(exc).__name__)
    finally:
        hub.ring(RECHECK, user_id)


async def _refresh_registrations(
    hub: LiveHub, watchers: Watchers, look_after_writes: Callable[[str], None]
) -> None:
    try:
        gone = hub.unwatched_registrations()
        await watchers.forget(gone)
        lost = await watchers.refresh(hub.registered_users())
        if lost:  # purged meanwhile: registered again, then their streams look again
            await watchers.add(lost)
            busy: set[str] = set()
            try:
                busy = await watchers.busy(lost)
            finally:  # those with a write under way look once it ended (not waited for here:
                # it would hold up new streams' registrations), the rest now
                for user_id in lost:
                    if user_id in busy:
                        look_after_writes(user_id)
                    else:
                        hub.ring(RECHECK, user_id)
        await watchers.purge()
    except Exception as exc:  # rows kept too long cost doorbells nobody hears; next time
        log.warning("live.registrations_not_refreshed", error=type(exc).__name__)
