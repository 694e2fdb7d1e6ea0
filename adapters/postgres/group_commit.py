"""Group commit for the webhook path (DR-48): concurrent deliveries share round trips and commits.

The webhook path's cost was one transaction per delivery: its round trips, its commit (a WAL
flush) and a pooled connection each. Here the deliveries that arrive while earlier ones are
being written wait together and go out as one pipeline: their routes in one round trip, their
records and changes in one transaction and one round trip. Nobody waits for a batch to fill:
a delivery that finds no batch of its kind in flight is written at once, alone; the ones that
arrive while a batch is in flight go out together as the next batch when it is done. A further
batch starts beside it only once the one in flight has taken longer than a normal batch
(`PATIENCE_SECONDS`): one slow batch then holds up the others that long at most. Fewer, larger
batches cost less CPU per delivery and wait less in total than many small ones (DR-48).

Each delivery is still answered only once its own transaction committed, and a batch that
fails is never a reason for one of its deliveries to fail: its deliveries are then written
one transaction each (the `alone` ledger, the reference path), and each caller hears only
its own delivery's outcome.

The order inside a batch's transaction (the proof is in DR-48):
1. a lock timeout, so that a user's lock held long elsewhere (a token refresh across
   Calendly's answer, DR-33) sends the batch to the alone path instead of holding up every
   other user in it;
2. every user's lock (`meetings:<user>`), in one sorted order, before any write: no two
   batches wait for each other in a circle, and the transaction gets its id only once it
   holds all of them, so each user's transactions still get their ids, their `user_seq` and
   their commits in one order (the change feed's promise, DR-31 and DR-33);
3. the deliveries, grouped by user, each user's under its own tenant (row-level security is
   checked statement by statement), deliveries no user was found for last, without one;
4. COMMIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Generic, TypeVar

import msgspec
import psycopg
import psycopg_pool
import structlog

from domain.errors import RouteChanged, StorageUnavailable
from domain.ports import DeliveryLedger, DeliveryRecord, Route

from .one_write import Statement, run_transaction
from .pool import Connection, sweep_broken_connections
from .roles import BATCH_WRITER_ROLE
from .sealing import TokenCipher
from .session import SET_TENANT
from .unit_of_work import UNAVAILABLE
from .webhook_events import (
    RECORD_AND_APPLY_BATCH,
    batch_document,
    batch_outcomes,
    batch_rounds,
    batchable,
    record_statement,
    recorded_by,
)
from .webhook_routes import ROUTES_BY_TOKENS, route_from_row, route_statement

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# How long a batch waits for any lock before its deliveries are written one by one instead.
# A batch holds its locks for a few milliseconds; only a transaction that holds a user's lock
# across a call to Calendly (DR-33) makes one wait this long.
LOCK_TIMEOUT_MS = 250
# The batch's own trouble, not the database's (psycopg counts them as operational errors): a
# lock it gave up waiting for, a deadlock or a serialization failure.
BATCH_ONLY = (psycopg.errors.LockNotAvailable, psycopg.errors.TransactionRollback)
# The batch writer refused (DR-61): its role missing, its rights or a policy. The batch is then
# written one delivery at a time, and later ones without the batch writer.
WRITER_REFUSED = (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedObject)
SET_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', %s, true)"
# A batch's own doorbells (migrations/0018, DR-57): the meetings' trigger rings none within
# the batch's transaction, and one statement after its writes rings those of its users that
# some process listens for (or all of them, while some process listens for everyone). It
# runs after the users' locks were taken, so it sees every registration made before.
BATCH_SETTINGS = (
    "SELECT set_config('lock_timeout', %s, true), set_config('app.doorbells', 'batch', true)"
)
RING_WATCHED = (
    "SELECT count(pg_notify('calendly_changes', 'meetings:' || u)) FROM unnest(%s::text[]) AS u"
    " WHERE EXISTS (SELECT FROM live_watchers w WHERE w.user_id IN (u, '*'))"
)
# Between the users in `app.batch_users` (migrations/0019): no user id holds it (they are
# printable text, domain.model.is_user_id).
BATCH_USERS_SEPARATOR = "\x1f"
# The rest of a batch's transaction as the batch writer (migrations/0019, DR-61), which may
# write the rows of the batch's users only (`app.batch_users`), and under no tenant.
AS_BATCH_WRITER = (
    f"SELECT set_config('role', '{BATCH_WRITER_ROLE}', true),"
    " set_config('app.batch_users', %s, true), set_config('app.user_id', '', true)"
)
# Every user's lock (the key LOCK_TENANT takes), one after the other in the array's order (a
# function scan yields its rows in order, and the aggregate takes them as they come).
LOCK_USERS = (
    "SELECT count(pg_advisory_xact_lock(hashtextextended('meetings:' || u, 0)))"
    " FROM unnest(%s::text[]) AS u"
)
# The most deliveries in one transaction, and the most batches of one kind in flight at once
# per process (each holds a pooled connection while it runs).
MAX_BATCH = 64
# The fewest deliveries in a batch's first round for its plain deliveries to be written by one
# statement per round for many users (DR-61): one delivery costs Postgres more that way than
# by its own statement (later rounds, of one user's further deliveries, go that way too, so
# that each statement always runs as the same role: Postgres plans again when it changes).
MIN_TOGETHER = 2
MAX_RUNNING = 3
# How long the batch in flight may take before deliveries waiting behind it get a batch of
# their own (DR-48, amended). Below it, one batch of each kind is in flight per process and
# the next one gathers everything that arrived meanwhile: fewer, larger batches, which cost
# less CPU per delivery and wait less than many small ones. Beyond it, a batch that waits for a
# lock held long elsewhere, or a slow connection, holds up the others for this long at most.
# A normal batch takes a few milliseconds; this is about the slowest ones under full load.
PATIENCE_SECONDS = 0.02
# The routes found by a connection's token kept per process, and for how long (DR-60): a
# delivery on a connection's own URL then needs no lookup before its write, which checks
# that the route it was judged by is still current. The ones read last are kept; about half
# a kilobyte each.
KEPT_ROUTES = 10_000
KEPT_SECONDS = 300.0


class KeptRoutes:
    """Routes found by their connection's token, each for `seconds` after it was read, the
    `max_routes` read last (DR-60). A token found to have no route is not kept: a stranger's
    guesses cost a lookup each, as before, and fill nothing. Kept routes hold unsealed
    signing keys: an expired one is dropped on the next call, or by a timer while the process
    receives nothing, never kept longer than about `seconds`."""

    def __init__(self, *, max_routes: int, seconds: float) -> None:
        if max_routes < 0 or seconds < 0:
            raise ValueError("max_routes and seconds must not be negative")
        self._max = max_routes
        self._seconds = seconds
        # In the order they were read, so the first is the first to expire.
        self._routes: OrderedDict[str, tuple[Route, float]] = OrderedDict()
        self._tokens: dict[str, str] = {}  # connection id -> its kept token
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._routes)

    def get(self, token: str) -> Route | None:
        self._sweep()
        kept = self._routes.get(token)
        return None if kept is None else kept[0]

    def put(self, token: str, route: Route | None) -> None:
        self._sweep()
        self._drop(token)
        if route is None or self._max == 0:
            return
        earlier = self._tokens.get(route.connection_id)
        if earlier is not None:  # the connection's token changed: the old one routes nowhere
            self._drop(earlier)
        kept = msgspec.structs.replace(route, kept=True)  # what later calls are answered
        self._routes[token] = (kept, time.monotonic() + self._seconds)
        self._tokens[route.connection_id] = token
        while len(self._routes) > self._max:
            self._drop(next(iter(self._routes)))
        self._arm()

    def forget_connection(self, connection_id: str) -> None:
        token = self._tokens.get(connection_id)
        if token is not None:
            self._drop(token)

    def _sweep(self) -> None:
        now = time.monotonic()
        while self._routes:
            token, (_, until) = next(iter(self._routes.items()))
            if until > now:
                return
            self._drop(token)

    def _arm(self) -> None:
        """Sweep when the first kept route expires, should no call come first."""
        if self._timer is not None or not self._routes:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a caller outside one): swept by the next call only
            return
        until = next(iter(self._routes.values()))[1]
        self._timer = loop.call_later(max(0.0, until - time.monotonic()) + 0.01, self._rung)

    def _rung(self) -> None:
        self._timer = None
        self._sweep()
        self._arm()

    def _drop(self, token: str) -> None:
        kept = self._routes.pop(token, None)
        if kept is not None and self._tokens.get(kept[0].connection_id) == token:
            del self._tokens[kept[0].connection_id]


class Coalescer(Generic[T, R]):
    """Calls `run` with what concurrent callers asked for, at most `max_batch` at a time.

    A caller whose item finds no run in flight starts one at once (no waiting for company).
    Otherwise its item waits for the next batch: the run in flight takes it when its batch is
    done, or, with `patience` (seconds), a further run starts for the waiting items once every
    batch in flight has taken that long, up to `max_running` runs (with no `patience`, a
    further run starts at once while there are fewer). `run` answers one result, exception or
    future of either per item, in order (a future's caller is answered when it is done,
    whatever the others); should `run` raise, every caller of that run hears it. A caller that
    stops waiting (cancelled) is skipped if its run has not begun; one already begun completes
    without it.
    """

    def __init__(
        self,
        run: Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException | asyncio.Future[R]]]],
        *,
        max_batch: int = MAX_BATCH,
        max_running: int = MAX_RUNNING,
        patience: float | None = None,
    ) -> None:
        if max_batch < 1 or max_running < 1:
            raise ValueError("max_batch and max_running must be at least 1")
        if patience is not None and patience < 0:
            raise ValueError("patience must not be negative")
        self._run = run
        self._max_batch = max_batch
        self._max_running = max_running
        self._patience = patience
        self._waiting: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._active = 0  # runs that may still take from the queue
        self._running: set[asyncio.Task[None]] = set()  # (their tasks, kept referenced)
        # When each run's batch in flight began (loop time), by run; a run not in it is about
        # to take from the queue.
        self._began: dict[object, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0  # runs made (for tests and figures)

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._consider()
        return await future

    def _consider(self) -> None:
        """Start a run for the waiting items if they may have one now; else, with patience,
        look again when the youngest batch in flight has taken that long."""
        if not self._waiting or self._active >= self._max_running:
            return
        if self._active and self._patience is not None:
            if len(self._began) < self._active:
                return  # a run is about to take from the queue
            loop = asyncio.get_running_loop()
            due = max(self._began.values()) + self._patience
            if loop.time() < due:
                if self._timer is None:
                    self._timer = loop.call_at(due, self._look_again)
                return
        self._active += 1
        turn = _Turn()
        # A run serves many requests: it carries none of their log context.
        task = asyncio.create_task(self._drain(turn), context=contextvars.Context())
        self._running.add(task)
        task.add_done_callback(partial(self._ended, turn))

    def _look_again(self) -> None:
        self._timer = None
        self._consider()

    def _ended(self, turn: _Turn, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not turn.started:  # cancelled before its first step: `_drain` never counted it out
            self._active -= 1
            # Callers that queued behind it, counting on it to take them, need another run
            # (none when they were cancelled with it, as a loop being torn down does).
            if any(not future.done() for _, future in self._waiting):
                self._consider()

    async def _drain(self, turn: _Turn) -> None:
        turn.started = True
        try:
            await self._take_turns(object())
        finally:
            # No await between the last look at the queue and this: a caller arriving after it
            # finds the run gone and starts another (a done-callback would come too late).
            self._active -= 1

    async def _take_turns(self, me: object) -> None:
        while self._waiting:
            batch: list[tuple[T, asyncio.Future[R]]] = []
            while self._waiting and len(batch) < self._max_batch:
                item, future = self._waiting.popleft()
                if not future.done():  # its caller stopped waiting before the run
                    batch.append((item, future))
            if not batch:
                continue
            self.batches += 1
            try:
                self._began[me] = asyncio.get_running_loop().time()
                if self._waiting:  # more than one batch's worth: a further run may be due
                    self._consider()
                answers = await self._run([item for item, _ in batch])
                if len(answers) != len(batch):
                    raise RuntimeError(f"a run answered {len(answers)} of {len(batch)} items")
            except asyncio.CancelledError:  # the process is stopping: so are its callers
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:
                for _, future in batch:
                    _settle(future, exc)
                continue
            finally:
                del self._began[me]
            for (_, future), answer in zip(batch, answers, strict=True):
                if isinstance(answer, asyncio.Future):
                    # Answered later, on its own (a batch that fell back): pass it on then.
                    answer.add_done_callback(partial(_pass_on, to=future))
                else:
                    _settle(future, answer)

    async def drain(self) -> None:
        """Wait for the runs in flight (a clean stop)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


class _Turn:
    """One run of a Coalescer: whether its task has taken its first step."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = False


def _settle(future: asyncio.Future[R], answer: R | BaseException) -> None:
    if future.done():  # its caller stopped waiting
        return
    if isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)


def _pass_on(answered: asyncio.Future[R], *, to: asyncio.Future[R]) -> None:
    if answered.cancelled():
        to.cancel()
    else:
        exception = answered.exception()
        _settle(to, exception if exception is not None else answered.result())


class PostgresDeliveryLedger(DeliveryLedger):
    """The webhook path's ledger over the pool, with group commit (see the module's text)."""

    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Connection],
        cipher: TokenCipher,
        alone: DeliveryLedger,
        *,
        max_batch: int = MAX_BATCH,
        max_running: int = MAX_RUNNING,
        patience: float | None = PATIENCE_SECONDS,
        lock_timeout_ms: int = LOCK_TIMEOUT_MS,
        kept_routes: int = KEPT_ROUTES,
        kept_seconds: float = KEPT_SECONDS,
        together: bool = True,
    ) -> None:
        self._pool = pool
        self._cipher = cipher
        self._alone = alone
        self._lock_timeout = f"{lock_timeout_ms}ms"
        self._together = together
        self.routes: Coalescer[tuple[str | None, tuple[str, ...]], Route | None] = Coalescer(
            self._find_routes, max_batch=max_batch, max_running=max_running, patience=patience
        )
        self.records: Coalescer[DeliveryRecord, bool] = Coalescer(
            self._record_batch, max_batch=max_batch, max_running=max_running, patience=patience
        )
        self._kept = KeptRoutes(max_routes=kept_routes, seconds=kept_seconds)
        self.fallbacks = 0  # batches written one by one instead (for tests and figures)
        self._alone_tasks: set[asyncio.Task[bool]] = set()

    async def route(
        self,
        *,
        webhook_token: str | None = None,
        calendly_user_uris: Sequence[str] = (),
        fresh: bool = False,
    ) -> Route | None:
        if webhook_token is None and not calendly_user_uris:
            return None  # nothing to look by (route_statement would say the same)
        if webhook_token is None:
            return await self.routes((None, tuple(calendly_user_uris)))
        if not fresh:
            kept = self._kept.get(webhook_token)
            if kept is not None:
                return kept
        route = await self.routes((webhook_token, ()))
        self._kept.put(webhook_token, route)
        return route

    async def record(self, delivery: DeliveryRecord) -> bool:
        try:
            return await self.records(delivery)
        except RouteChanged as exc:  # from its batch, or written alone after a batch failed
            self._kept.forget_connection(exc.connection_id)
            raise

    async def drain(self) -> None:
        await self.routes.drain()
        await self.records.drain()
        while self._alone_tasks:
            await asyncio.gather(*self._alone_tasks, return_exceptions=True)

    # ------------------------------------------------------------------ routes
    async def _find_routes(
        self, lookups: Sequence[tuple[str | None, tuple[str, ...]]]
    ) -> list[Route | BaseException | None]:
        """Every lookup in one round trip (the routes are read outside any tenant): those by
        a connection's token in one statement, those by URIs one statement each."""
        tokens = sorted({token for token, _ in lookups if token is not None})
        statements: list[Statement] = []
        if tokens:
            statements.append((ROUTES_BY_TOKENS, (tokens,)))
        by_uris: list[int | None] = []  # each lookup's statement by URIs, if it has one
        for token, uris in lookups:
            statement = None if token is not None else route_statement(None, uris)
            by_uris.append(None if statement is None else len(statements))
            if statement is not None:
                statements.append(statement)
        try:
            async with self._pool.connection() as conn:
                # In one write, and their answers read in one go (DR-59).
                answers = await run_transaction(conn, statements, rows=True)
                by_token = {
                    row["webhook_token"]: row for row in (answers[0].rows or [] if tokens else [])
                }
                found: list[Route | BaseException | None] = []
                for (token, _), at in zip(lookups, by_uris, strict=True):
                    row = by_token.get(token) if token is not None else None
                    if at is not None:
                        row = next(iter(answers[at].rows or []), None)
                    try:  # a key that cannot be unsealed is that route's trouble alone
                        found.append(route_from_row(row, self._cipher))
                    except Exception as exc:
                        found.append(exc)
                return found
        except UNAVAILABLE as exc:
            sweep_broken_connections(self._pool)
            return [unavailable(exc) for _ in lookups]
        except psycopg.Error:
            if len(lookups) == 1:
                raise
        # One lookup's bad input (text Postgres refuses) failed them all: each alone.
        return await each_alone(self._find_routes, lookups)

    # ------------------------------------------------------------------ records
    async def _record_batch(
        self, deliveries: Sequence[DeliveryRecord]
    ) -> Sequence[bool | BaseException | asyncio.Future[bool]]:
        try:
            async with self._pool.connection() as conn:
                try:
                    return list(await self._write_together(conn, deliveries))
                except Exception as exc:  # one delivery's trouble, in SQL or in Python
                    if conn.closed or (
                        isinstance(exc, UNAVAILABLE) and not isinstance(exc, BATCH_ONLY)
                    ):
                        raise
                    if self._together and isinstance(exc, WRITER_REFUSED):
                        # The batch writer gone, or its rights (DR-61): every batch would fail
                        # the same way. One statement per delivery from now on, as before.
                        self._together = False
                        log.warning(
                            "webhooks.batch_writer_unavailable",
                            reason=type(exc).__name__,
                            fix="calendly-connect migrate, then restart; see the doctor",
                        )
                    # A lock held long elsewhere, a deadlock, one delivery's bad data: none of
                    # it may fail the others. Each is written alone below.
                    with contextlib.suppress(psycopg.Error):
                        await conn.rollback()
        except UNAVAILABLE as exc:
            sweep_broken_connections(self._pool)
            return [unavailable(exc) for _ in deliveries]
        # Each written alone, concurrently, and each caller answered as soon as its own is
        # committed: one that waits for a busy user's lock holds up nobody else.
        self.fallbacks += 1
        alone: list[asyncio.Future[bool]] = []
        for delivery in deliveries:
            task = asyncio.create_task(self._alone.record(delivery), context=contextvars.Context())
            self._alone_tasks.add(task)
            task.add_done_callback(self._alone_tasks.discard)
            alone.append(task)
        return alone

    async def _write_together(
        self, conn: Connection, deliveries: Sequence[DeliveryRecord]
    ) -> list[bool | BaseException]:
        users = sorted({d.route.user_id for d in deliveries if d.route is not None})
        statements: list[Statement] = [(BATCH_SETTINGS, (self._lock_timeout,))]
        if users:
            statements.append((LOCK_USERS, (users,)))
            # The doorbells ring at COMMIT, wherever this stands after the locks: first, so it
            # always runs as the runtime role (a plan is made again when the role changes).
            statements.append((RING_WATCHED, (users,)))
        records: list[tuple[int, str, int]] = []  # delivery, its query, its statement's place
        tenant: str | None = None

        def one_each(places: Sequence[int]) -> None:
            """Each delivery at `places` by its own statement, under its user's tenant."""
            nonlocal tenant
            for i in places:
                delivery = deliveries[i]
                user = delivery.route.user_id if delivery.route is not None else ""
                if user != tenant:
                    statements.append((SET_TENANT, (user,)))  # '' is no tenant
                    tenant = user
                query, parameters = record_statement(
                    event_id=delivery.event_id,
                    event_type=delivery.event_type,
                    payload=delivery.payload,
                    connection=delivery.route,
                    outcome=delivery.outcome,
                    reason=delivery.reason,
                    change=delivery.change,
                )
                records.append((i, query, len(statements)))
                statements.append((query, parameters))

        # Plain deliveries under routes go together, one statement per round of many users
        # (DR-61), as the batch writer, once the first round holds more than one; the rest
        # first, one statement each, as before. A delivery's copies are alike: they go the
        # same way, in the order they came.
        together = [i for i, d in enumerate(deliveries) if self._together and batchable(d)]
        if len(together) < len(deliveries):
            # A user (or a delivery id) with deliveries of both kinds keeps them all apart, in
            # the order they came, as before.
            chosen = set(together)
            apart = [d for i, d in enumerate(deliveries) if i not in chosen]
            users_apart = {d.route.user_id for d in apart if d.route is not None}
            ids_apart = {d.event_id for d in apart}
            together = [
                i
                for i in together
                if deliveries[i].event_id not in ids_apart
                and _place(deliveries[i])[1] not in users_apart
            ]
        rounds = batch_rounds([deliveries[i] for i in together]) if together else []
        if not rounds or len(rounds[0]) < MIN_TOGETHER:
            together, rounds = [], []  # nothing to gain: the statement per delivery
        chosen = set(together)
        one_each(
            sorted(
                (i for i in range(len(deliveries)) if i not in chosen),
                key=lambda i: _place(deliveries[i]),
            )
        )
        written: list[tuple[list[int], int]] = []  # each round's deliveries, its statement's place
        if rounds:
            named = BATCH_USERS_SEPARATOR.join(_users_of(deliveries, together))
            statements.append((AS_BATCH_WRITER, (named,)))
            for places in rounds:
                members = [together[p] for p in places]
                written.append((members, len(statements)))
                statements.append(
                    (RECORD_AND_APPLY_BATCH, batch_document([deliveries[i] for i in members]))
                )
        # In one write, and their answers read in one go (DR-59).
        answered = await run_transaction(conn, statements)
        answers: list[bool | BaseException] = [False] * len(deliveries)
        for i, query, at in records:
            # Committed: whatever reading one answer raises (RouteChanged: that delivery wrote
            # nothing) is that delivery's alone, never a reason to write the batch again.
            try:
                answers[i] = recorded_by(query, answered[at], deliveries[i].route)
            except Exception as exc:
                answers[i] = exc
        for members, at in written:
            try:
                outcomes: Sequence[bool | BaseException] = batch_outcomes(
                    answered[at], [deliveries[i] for i in members]
                )
            except Exception as exc:
                outcomes = [exc] * len(members)
            for i, outcome in zip(members, outcomes, strict=True):
                answers[i] = outcome
        return answers


def _users_of(deliveries: Sequence[DeliveryRecord], places: Sequence[int]) -> list[str]:
    return sorted({route.user_id for i in places if (route := deliveries[i].route) is not None})


def _place(delivery: DeliveryRecord) -> tuple[int, str]:
    """A delivery's place in its batch: by user, those without one last."""
    if delivery.route is None:
        return (1, "")
    return (0, delivery.route.user_id)


async def each_alone(
    run: Callable[[Sequence[T]], Awaitable[Sequence[R]]], items: Sequence[T]
) -> list[R | BaseException]:
    """`run` once per item, concurrently, after a run of them together failed: each item's
    trouble then stays its own."""
    answers = await asyncio.gather(*(run([item]) for item in items), return_exceptions=True)
    return [a if isinstance(a, BaseException) else a[0] for a in answers]


def unavailable(cause: BaseException) -> StorageUnavailable:
    error = StorageUnavailable("the database connection failed")
    error.__cause__ = cause
    return error
