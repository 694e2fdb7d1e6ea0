"""`calendly-connect host-webhooks run`: the host webhooks' dispatcher (DR-32, DR-34).

Its own process, any number of them. Each round (every poll interval, and at once on the
`calendly_changes` doorbell): fan the change log out into per-(endpoint, user) streams, then
claim due streams per endpoint, up to that endpoint's free slots (a slow endpoint fills only its
own), and deliver each stream's changes in user_seq order, one POST at a time, signed the
Standard Webhooks way. No transaction is open during a POST; each delivery advances the stream
only while its lease is ours. 410 disables the endpoint; anything else that is not 2xx backs the
stream off (5 s * 3^n, capped at 12 h, jittered; never sooner than Retry-After) and parks it
after 72 h of failures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Generic, TypeVar

import aiohttp
import msgspec
import structlog

from adapters.host_webhooks import HostWebhookSender
from adapters.postgres.host_webhooks import (
    ClaimedStream,
    EndpointConfig,
    PostgresHostWebhooks,
)
from adapters.postgres.listener import PostgresChangeListener
from adapters.postgres.pool import make_pool
from adapters.postgres.watching import EVERYONE, PostgresLiveWatchers
from domain.changes import Change, event_matches
from domain.usecases.views import ConnectionView
from entrypoints.arguments import fail
from entrypoints.live import REGISTRY_REFRESH_SECONDS
from entrypoints.logging import configure_service_logging
from entrypoints.names import process_name
from entrypoints.service.event_loop import run_fast, stopped_by_signals
from entrypoints.service.http.schemas import MeetingResponse, UserConnectionResponse
from entrypoints.settings import (
    ConfigError,
    DispatcherSettings,
    HostWebhookEndpoint,
    load_dispatcher_settings,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")
R = TypeVar("R")
HEARTBEAT_SECONDS: Final = 15.0
# How often an endpoint's last success is written at most (it is for `status` and the doctor).
SUCCESS_NOTE_SECONDS: Final = 1.0
STOP_GRACE_SECONDS: Final = 20.0
LEASE_SECONDS: Final = 60.0
FAN_OUT_PAGE: Final = 1000
# A claimed stream's changes read with the claim; a stream with more is due again at once.
PENDING_PAGE: Final = 100
# Rounds (fan out, claim) start at most this often: under a stream of doorbells (one per
# committed change) they gather what came meanwhile instead of running once per change.
ROUND_GAP_SECONDS: Final = 0.05
# Streams done within this of each other are settled in one statement.
SETTLE_LINGER_SECONDS: Final = 0.02
# Back-off of a failing stream (DR-22's shape, longer: up to 3 days of tries, then parked).
BACKOFF_BASE_SECONDS: Final = 5.0
BACKOFF_CAP_SECONDS: Final = 12 * 3600.0
PARK_AFTER_SECONDS: Final = 72 * 3600.0


def dispatcher_id() -> str:
    return process_name()


def message_id(change: Change) -> str:
    """`webhook-id`: the change's own id, the same on every retry and for every endpoint."""
    return f"msg_{change.position.id}"


def payload(change: Change) -> bytes:
    """The JSON body: the event, when it happened, and the subject as /v1/changes shows it."""
    data: dict[str, Any] = {
        "user_id": change.user_id,
        "sequence": change.user_seq,
        "cursor": f"{change.position.xid}.{change.position.id}",
        "subject_id": change.subject_id,
    }
    if change.kind == "connection":
        listed = change.connection
        data["connection"] = (
            UserConnectionResponse.of_user(listed.user_id, ConnectionView.listed(listed))
            if listed is not None
            else None
        )
    else:
        data["meeting"] = MeetingResponse.of(change.meeting) if change.meeting else None
    return msgspec.json.encode({"type": change.event, "timestamp": change.created_at, "data": data})


class GroupCommit(Generic[T, R]):
    """Calls that arrive within `linger` seconds, or while a batch is being written, are written
    together in one batch: one write however many callers came meanwhile. Each caller gets the
    whole batch's result (or its exception)."""

    def __init__(self, write: Callable[[list[T]], Awaitable[R]], linger: float = 0.0) -> None:
        self._write = write
        self._linger = linger
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                if self._linger:
                    await asyncio.sleep(self._linger)
                batch, self._queue = self._queue, []
                try:
                    result = await self._write([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                except BaseException as exc:  # cancelled (a stop): nobody may wait forever
                    for _, future in [*batch, *self._queue]:
                        if not future.done():
                            future.set_exception(exc)
                    self._queue = []
                    raise
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(result)
        finally:
            self._writer = None


class Dispatcher:
    """Fans out, claims and delivers; `run` until `stop`, or `run_once` in tests."""

    def __init__(
        self,
        store: PostgresHostWebhooks,
        sender: HostWebhookSender,
        endpoints: Sequence[HostWebhookEndpoint],
        *,
        owner: str | None = None,
        concurrency: int = 8,
        poll_seconds: float = 1.0,
        round_gap_seconds: float = ROUND_GAP_SECONDS,
        page: int = PENDING_PAGE,
        lease_seconds: float = LEASE_SECONDS,
        backoff_base: float = BACKOFF_BASE_SECONDS,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
        park_after: float = PARK_AFTER_SECONDS,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._sender = sender
        self._endpoints = {e.name: e for e in endpoints}
        self.owner = owner or dispatcher_id()
        self._concurrency = concurrency
        self._poll = poll_seconds
        self._gap = round_gap_seconds
        self._page = page
        self._lease = lease_seconds
        self._base, self._cap, self._park_after = backoff_base, backoff_cap, park_after
        self._jitter = jitter
        self._running: dict[str, set[asyncio.Task[None]]] = {
            name: set() for name in self._endpoints
        }
        # (endpoint, user) of the streams this dispatcher is sending now.
        self._sending: set[tuple[str, str]] = set()
        # When an endpoint last answered 410: its streams in flight stop before their next send.
        self._gone_at: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._ready = False
        self.delivered = 0
        # When each endpoint's last success was written: at most once a second, so concurrent
        # deliveries to one endpoint do not queue on its row.
        self._success_noted: dict[str, float] = {}
        # Streams done are settled together: one statement for all that finished meanwhile.
        self._settle: GroupCommit[tuple[ClaimedStream, int], set[tuple[str, str]]] = GroupCommit(
            lambda done: self._store.settle(self.owner, done), linger=SETTLE_LINGER_SECONDS
        )

    def ring(self, kind: str | None = None, user_id: str | None = None) -> None:
        """The doorbell: something changed (or the listener reconnected)."""
        self._wake.set()

    async def prepare(self) -> None:
        """Upsert the configured endpoints (a new one starts at the end of the feed)."""
        await self._store.upsert_endpoints(
            [
                EndpointConfig(name=e.name, url=e.url, event_types=e.event_types)
                for e in self._endpoints.values()
            ]
        )
        self._ready = True

    async def run(self, stop: asyncio.Event) -> None:
        log.info("host_webhooks.started", dispatcher=self.owner, endpoints=sorted(self._endpoints))
        last_beat = 0.0
        try:
            while not stop.is_set():
                if not self._ready:
                    await self._safely(self.prepare())
                if time.monotonic() - last_beat > HEARTBEAT_SECONDS:
                    await self._safely(self._store.heartbeat(self.owner))
                    last_beat = time.monotonic()
                self._wake.clear()
                if self._ready:
                    started = time.monotonic()
                    await self._round()
                    await self._pause(stop, until=started + self._gap)
                await self._pause(stop)
        finally:
            running = {t for tasks in self._running.values() for t in tasks}
            if running:
                _, late = await asyncio.wait(running, timeout=STOP_GRACE_SECONDS)
                for task in late:  # its lease runs out and another dispatcher takes over
                    task.cancel()
                if late:
                    await asyncio.wait(late)
        log.info("host_webhooks.stopped", dispatcher=self.owner, delivered=self.delivered)

    async def run_once(self) -> None:
        """One round, waiting for every delivery it started (tests)."""
        if not self._ready:
            await self.prepare()
        await self._round()
        running = {t for tasks in self._running.values() for t in tasks}
        if running:
            await asyncio.wait(running)

    async def _round(self) -> None:
        for name in self._endpoints:
            await self._safely(self._fan_out(name))
        for name, endpoint in self._endpoints.items():
            free = self._concurrency - len(self._running[name])
            if free <= 0:
                continue
            claimed_at = time.monotonic()
            busy = [user for endpoint_name, user in self._sending if endpoint_name == name]
            try:
                claimed = await self._store.claim_with_pending(
                    name, self.owner, free, self._lease, self._page, busy=busy
                )
            except Exception as exc:  # the loop outlives a database outage
                log.warning("host_webhooks.claim_failed", endpoint=name, error=type(exc).__name__)
                continue
            for stream, changes in claimed:
                key = (name, stream.user_id)
                if key in self._sending:
                    # The claim leaves out streams this dispatcher is sending; should one come
                    # back anyway, its task carries on: a second one would send twice.
                    log.warning("host_webhooks.still_sending", endpoint=name, user_id=key[1])
                    continue
                task = asyncio.create_task(
                    self._deliver(endpoint, stream, changes, claimed_at),
                    name=f"host-webhook:{name}:{stream.user_id}",
                )
                self._running[name].add(task)
                self._sending.add(key)
                task.add_done_callback(self._done(name, key))

    async def _fan_out(self, name: str) -> None:
        while await self._store.fan_out(name, FAN_OUT_PAGE) == FAN_OUT_PAGE:
            pass

    def _done(self, name: str, key: tuple[str, str]) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._running[name].discard(task)
            self._sending.discard(key)
            self._wake.set()  # a slot is free: claim again

        return done

    async def _pause(self, stop: asyncio.Event, until: float | None = None) -> None:
        """Until the doorbell rings or the poll interval ends; with `until`, until then (or a
        stop) whatever rings."""
        if until is not None:
            left = until - time.monotonic()
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), left)
            return
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _deliver(
        self,
        endpoint: HostWebhookEndpoint,
        stream: ClaimedStream,
        changes: list[Change],
        claimed_at: float,
    ) -> None:
        try:
            done = await self._send(endpoint, stream, changes, claimed_at)
            if done is not None:
                settled = await self._settle((stream, done))
                if (stream.endpoint, stream.user_id) not in settled:
                    log.warning(
                        "host_webhooks.lease_lost", endpoint=endpoint.name, user_id=stream.user_id
                    )
        except Exception as exc:  # the lease runs out; the stream is tried again then
            log.warning(
                "host_webhooks.stream_failed",
                endpoint=endpoint.name,
                user_id=stream.user_id,
                error=type(exc).__name__,
            )

    async def _send(
        self,
        endpoint: HostWebhookEndpoint,
        stream: ClaimedStream,
        changes: list[Change],
        claimed_at: float,
    ) -> int | None:
        """POST `changes` (the stream's first page) one at a time, in order. Returns how far the
        stream is done, to be settled with the others; None when it was settled here instead
        (backed off) or is no longer ours (the lease was lost).

        Nothing is written per message: a stream is advanced once, when it settles, or on the
        way when its sends take long enough to need a fresh lease. A dispatcher that dies in
        between sends that page again, under the same `webhook-id`s (at least once, DR-34)."""
        done = stream.sent_seq
        renewed = time.monotonic()
        for change in changes:
            if not event_matches(change.event, endpoint.event_types):
                done = change.user_seq  # not asked for: passed over, in order
                continue
            if self._gone_at.get(endpoint.name, -1.0) >= claimed_at:
                return done  # the endpoint answered 410 to another stream meanwhile
            if time.monotonic() - renewed > self._lease / 3:
                if not await self._store.advance(stream, self.owner, done, self._lease):
                    return None
                renewed = time.monotonic()
            sent = await self._sender.send(
                endpoint.url, endpoint.secrets, message_id(change), payload(change)
            )
            if sent.ok:
                done = change.user_seq
                self.delivered += 1
                await self._note_success(endpoint.name)
                continue
            if done > stream.sent_seq and not await self._store.advance(
                stream, self.owner, done, self._lease
            ):
                return None
            if sent.status == 410:
                self._gone_at[endpoint.name] = time.monotonic()
                log.warning("host_webhooks.endpoint_gone", endpoint=endpoint.name)
                await self._store.disable(endpoint.name, "410 Gone: the endpoint asked to stop")
                # Claims made before the disable committed may still start tasks: they stop too.
                self._gone_at[endpoint.name] = time.monotonic()
                return done
            backed = await self._store.back_off(
                stream,
                self.owner,
                sent.error or "failed",
                jitter=self._jitter(),
                retry_after=sent.retry_after,
                base=self._base,
                cap=self._cap,
                park_after=self._park_after,
            )
            log.warning(
                "host_webhooks.delivery_failed",
                endpoint=endpoint.name,
                user_id=stream.user_id,
                status=sent.status,
                error=sent.error,
                attempts=backed.attempts if backed else None,
                parked=backed.parked if backed else None,
            )
            return None
        # A short page held everything up to the head: what is missing was erased since.
        return stream.head_seq if len(changes) < self._page else done

    async def _note_success(self, name: str) -> None:
        """For `status` and the doctor only: a failure here never holds a delivery back."""
        now = time.monotonic()
        if now - self._success_noted.get(name, -SUCCESS_NOTE_SECONDS) >= SUCCESS_NOTE_SECONDS:
            self._success_noted[name] = now
            try:
                await self._store.succeeded(name)
            except Exception as exc:
                log.warning("host_webhooks.note_failed", endpoint=name, error=type(exc).__name__)

    @staticmethod
    async def _safely(work: Any) -> None:
        try:
            await work
        except Exception as exc:  # retried on the next round
            log.warning("host_webhooks.step_failed", error=type(exc).__name__)


def lower_priority(nice: int) -> None:
    """Make this process `nice` (DR-37): when the CPU is short, the services ingesting webhooks
    get it first and the deliveries wait. Not everywhere possible (Windows, some sandboxes): the
    dispatcher then runs at the usual priority, and says so."""
    if nice <= 0:
        return
    try:
        current = os.nice(0)
        if current < nice:
            os.nice(nice - current)
    except (AttributeError, OSError) as exc:
        log.warning("host_webhooks.priority_unchanged", nice=nice, error=type(exc).__name__)


async def hear_every_doorbell(
    watchers: PostgresLiveWatchers, every: float = REGISTRY_REFRESH_SECONDS
) -> None:
    """This dispatcher listens for every meeting's doorbell, for ever: a meeting's doorbell
    rings only while some process listens for its user (DR-57), and without this row a
    booking of a user whose page is closed would wait for the next poll. Refreshed every
    `every` seconds, so that it is never purged while the dispatcher lives."""
    while True:
        try:
            await watchers.add([EVERYONE])
        except Exception as exc:  # the poll still finds every change; the next refresh retries
            log.warning("host_webhooks.doorbells_not_registered", error=type(exc).__name__)
        await asyncio.sleep(every)


async def run_dispatcher(settings: DispatcherSettings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    with stopped_by_signals(stop):
        await _dispatch(settings, stop)


async def _dispatch(settings: DispatcherSettings, stop: asyncio.Event) -> None:
    database = settings.database
    pool = make_pool(
        database.url.reveal(),
        runtime_role=database.runtime_role,
        min_size=1,
        max_size=max(2, min(database.pool_max_size, 20)),
    )
    await pool.open(wait=False)
    config = settings.host_webhooks
    try:
        # No shared connection limit: each endpoint's own slots bound its connections, so a
        # slow endpoint never makes another wait for a connection.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            dispatcher = Dispatcher(
                PostgresHostWebhooks(pool),
                HostWebhookSender(session, timeout=config.timeout_seconds),
                config.endpoints,
                concurrency=config.concurrency,
                poll_seconds=config.poll_seconds,
            )
            listener = PostgresChangeListener(
                database.url.reveal(), dispatcher.ring, runtime_role=database.runtime_role
            )
            await listener.start()
            watchers = PostgresLiveWatchers(pool, dispatcher_id())
            hearing = asyncio.create_task(hear_every_doorbell(watchers), name="every-doorbell")
            try:
                await dispatcher.run(stop)
            finally:
                hearing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await hearing
                with contextlib.suppress(Exception):  # else purged once stale
                    await watchers.forget([EVERYONE])
                await listener.stop()
    finally:
        await pool.close()


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """`calendly-connect host-webhooks run`, configured from `environ`."""
    argparse.ArgumentParser(
        prog="calendly-connect host-webhooks run",
        description="Deliver host webhooks (HOST_WEBHOOK_URL) from the change log, signed the "
        "Standard Webhooks way, in order per user. Safe to run many at once.",
    ).parse_args(argv)
    try:
        settings = load_dispatcher_settings(environ)
    except ConfigError as exc:
        return fail(str(exc))
    if not settings.host_webhooks.endpoints:
        return fail("HOST_WEBHOOK_URL is not set: there is no endpoint to deliver to")
    configure_service_logging(settings)
    lower_priority(settings.host_webhooks.nice)
    try:
        run_fast(run_dispatcher(settings))
    except KeyboardInterrupt:
        return 0
    return 0
