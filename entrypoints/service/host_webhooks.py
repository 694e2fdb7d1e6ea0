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
import secrets
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

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
from domain.changes import Change, event_matches
from domain.usecases.views import ConnectionView
from entrypoints.arguments import fail
from entrypoints.logging import configure_service_logging
from entrypoints.service.http.schemas import MeetingResponse, UserConnectionResponse
from entrypoints.settings import (
    ConfigError,
    DispatcherSettings,
    HostWebhookEndpoint,
    load_dispatcher_settings,
)

log = structlog.get_logger(__name__)
HEARTBEAT_SECONDS: Final = 15.0
# How often an endpoint's last success is written at most (it is for `status` and the doctor).
SUCCESS_NOTE_SECONDS: Final = 1.0
STOP_GRACE_SECONDS: Final = 20.0
LEASE_SECONDS: Final = 60.0
FAN_OUT_PAGE: Final = 1000
# Back-off of a failing stream (DR-22's shape, longer: up to 3 days of tries, then parked).
BACKOFF_BASE_SECONDS: Final = 5.0
BACKOFF_CAP_SECONDS: Final = 12 * 3600.0
PARK_AFTER_SECONDS: Final = 72 * 3600.0


def dispatcher_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


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
        self._lease = lease_seconds
        self._base, self._cap, self._park_after = backoff_base, backoff_cap, park_after
        self._jitter = jitter
        self._running: dict[str, set[asyncio.Task[None]]] = {
            name: set() for name in self._endpoints
        }
        self._wake = asyncio.Event()
        self._ready = False
        self.delivered = 0
        # When each endpoint's last success was written: at most once a second, so concurrent
        # deliveries to one endpoint do not queue on its row.
        self._success_noted: dict[str, float] = {}

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
                    await self._round()
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
            try:
                claimed = await self._store.claim(name, self.owner, free, self._lease)
            except Exception as exc:  # the loop outlives a database outage
                log.warning("host_webhooks.claim_failed", endpoint=name, error=type(exc).__name__)
                continue
            for stream in claimed:
                task = asyncio.create_task(
                    self._deliver(endpoint, stream), name=f"host-webhook:{name}:{stream.user_id}"
                )
                self._running[name].add(task)
                task.add_done_callback(self._done(name))

    async def _fan_out(self, name: str) -> None:
        while await self._store.fan_out(name, FAN_OUT_PAGE) == FAN_OUT_PAGE:
            pass

    def _done(self, name: str) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._running[name].discard(task)
            self._wake.set()  # a slot is free: claim again

        return done

    async def _pause(self, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _deliver(self, endpoint: HostWebhookEndpoint, stream: ClaimedStream) -> None:
        try:
            if await self._send_stream(endpoint, stream):
                await self._store.release(stream, self.owner)
        except Exception as exc:  # the lease runs out; the stream is tried again then
            log.warning(
                "host_webhooks.stream_failed",
                endpoint=endpoint.name,
                user_id=stream.user_id,
                error=type(exc).__name__,
            )

    async def _send_stream(self, endpoint: HostWebhookEndpoint, stream: ClaimedStream) -> bool:
        """Deliver what is pending, in order; False when the stream is no longer ours to
        release (the lease was lost, or it was backed off)."""
        sent_seq = stream.sent_seq
        while sent_seq < stream.head_seq:
            batch = await self._store.pending(msgspec.structs.replace(stream, sent_seq=sent_seq))
            if not batch:  # gone since (an erasure): nothing left to send up to the head
                return await self._store.advance(stream, self.owner, stream.head_seq, self._lease)
            skipped_to = 0
            for change in batch:
                if not event_matches(change.event, endpoint.event_types):
                    skipped_to = change.user_seq  # not asked for: passed over, in order
                    continue
                if skipped_to and not await self._store.advance(
                    stream, self.owner, skipped_to, self._lease
                ):
                    return False
                skipped_to = 0
                sent = await self._sender.send(
                    endpoint.url, endpoint.secrets, message_id(change), payload(change)
                )
                if sent.ok:
                    if not await self._store.advance(
                        stream, self.owner, change.user_seq, self._lease
                    ):
                        return False
                    await self._note_success(endpoint.name)
                    self.delivered += 1
                    continue
                if sent.status == 410:
                    log.warning("host_webhooks.endpoint_gone", endpoint=endpoint.name)
                    await self._store.disable(endpoint.name, "410 Gone: the endpoint asked to stop")
                    return True
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
                return False
            if skipped_to and not await self._store.advance(
                stream, self.owner, skipped_to, self._lease
            ):
                return False
            sent_seq = batch[-1].user_seq
        return True

    async def _note_success(self, name: str) -> None:
        now = time.monotonic()
        if now - self._success_noted.get(name, -SUCCESS_NOTE_SECONDS) >= SUCCESS_NOTE_SECONDS:
            self._success_noted[name] = now
            await self._store.succeeded(name)

    @staticmethod
    async def _safely(work: Any) -> None:
        try:
            await work
        except Exception as exc:  # retried on the next round
            log.warning("host_webhooks.step_failed", error=type(exc).__name__)


async def run_dispatcher(settings: DispatcherSettings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
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
            try:
                await dispatcher.run(stop)
            finally:
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
    try:
        asyncio.run(run_dispatcher(settings))
    except KeyboardInterrupt:
        return 0
    return 0
