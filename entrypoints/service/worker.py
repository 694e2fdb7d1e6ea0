"""`calendly-connect worker`: keeps every connection healthy, safely from many processes."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Mapping, Sequence
from datetime import datetime

import structlog

from adapters.postgres.changes import PostgresChangeLogRetention
from adapters.postgres.storage_retention import PostgresStorageRetention
from adapters.postgres.webhook_health import PostgresWebhookHealth
from domain.errors import StoredSecretUnreadable
from domain.ports import Clock, MaintenanceDue, MaintenanceQueue, MaintenanceResult
from domain.usecases.maintain_connection import MaintainConnection
from entrypoints.arguments import fail
from entrypoints.container import Container, drain_kept_grants, resolve
from entrypoints.logging import configure_service_logging
from entrypoints.names import process_name
from entrypoints.service.event_loop import stopped_by_signals
from entrypoints.settings import ConfigError, Settings, load_settings
from entrypoints.tracing import WORKER_SERVICE_NAME, TracingUnavailable, start_tracing

log = structlog.get_logger(__name__)
HEARTBEAT_SECONDS = 15.0
# On stop, work in progress gets this long to finish (within a container's usual 30 s grace).
STOP_GRACE_SECONDS = 20.0
# The change log's retention (DR-35): pruned at start and then this often, by every worker (one
# at a time: the others skip their turn). The worker, not the host webhooks' dispatcher: every
# deployment runs a worker, while the dispatcher runs only where HOST_WEBHOOK_URL is set.
PRUNE_SECONDS = 600.0
# A turn that stopped at its cap with rows to go is followed by the next this soon: pruning
# keeps pace with any ingest rate (each turn is at most 100 batches of 1,000 rows a kind).
PRUNE_AGAIN_SECONDS = 1.0
# How often a worker looks for an ended outage of the webhook endpoint to follow up (DR-45).
OUTAGE_SWEEP_SECONDS = 5.0


def worker_id() -> str:
    return process_name()


class Worker:
    """Claims due connections and maintains each in its own task, up to a fixed concurrency.

    A slot is refilled as soon as its connection is done, so one slow connection (a Calendly
    that times out, a rate-limit wait) holds one slot, never a whole batch. Every failure is
    recorded with a back-off (`retry_at`): a connection that keeps failing is left alone for
    longer and longer and cannot crowd out the others.
    """

    def __init__(
        self,
        queue: MaintenanceQueue,
        maintain: MaintainConnection,
        settings: Settings,
        owner: str | None = None,
        retention: PostgresChangeLogRetention | None = None,
        storage: PostgresStorageRetention | None = None,
        clock: Clock | None = None,
        webhook_health: PostgresWebhookHealth | None = None,
    ) -> None:
        self._queue = queue
        # None: the database's clock decides what is due and how long a lease lasts (one clock
        # for every worker); a simulated day binds its own.
        self._clock = clock
        self._webhook_health = webhook_health
        self._retention = retention
        self._storage = storage
        self._maintain = maintain
        self._settings = settings
        self.owner = owner or worker_id()
        self._capacity = settings.worker.concurrency
        self._running: set[asyncio.Task[None]] = set()
        self._finished = asyncio.Event()
        self.handled = 0

    async def run(self, stop: asyncio.Event) -> None:
        log.info("worker.started", worker=self.owner)
        last_beat = 0.0
        last_sweep, sweeping = 0.0, False
        last_prune: float | None = None
        pruning: asyncio.Task[int] | None = None
        try:
            while not stop.is_set():
                if time.monotonic() - last_beat > HEARTBEAT_SECONDS:
                    await self._safely(self._queue.heartbeat(self.owner))
                    last_beat = time.monotonic()
                every = PRUNE_AGAIN_SECONDS if self.pruning_behind else PRUNE_SECONDS
                if (last_prune is None or time.monotonic() - last_prune > every) and (
                    pruning is None or pruning.done()
                ):  # beside the claims, never in their way (a first prune may be long)
                    pruning = asyncio.create_task(self.prune(), name="worker-prune")
                    last_prune = time.monotonic()
                if sweeping or time.monotonic() - last_sweep > OUTAGE_SWEEP_SECONDS:
                    sweeping = await self.sweep_outages(batches=1) > 0  # more may follow
                    last_sweep = time.monotonic()
                free = self._capacity - len(self._running)
                self._finished.clear()  # a task that ends from here on wakes the pause below
                claimed = await self._start(free) if free > 0 else 0
                if claimed < free:  # nothing more is due now: wait for time or a free slot
                    await self._pause(stop, self._settings.worker.poll_seconds)
                elif free <= 0:  # every slot is busy: wait for one to finish
                    await self._pause(stop, HEARTBEAT_SECONDS)
        finally:
            if pruning is not None and not pruning.done():  # a batch is short: drop the rest
                pruning.cancel()
                await asyncio.gather(pruning, return_exceptions=True)
            if self._running:  # finish what was started: its lease would hold it otherwise
                _, late = await asyncio.wait(set(self._running), timeout=STOP_GRACE_SECONDS)
                for task in late:  # its lease runs out and another worker takes it over
                    task.cancel()
                if late:
                    await asyncio.wait(late)
                    log.warning("worker.stopped_unfinished", connections=len(late))
        log.info("worker.stopped", worker=self.owner, handled=self.handled)

    @property
    def pruning_behind(self) -> bool:
        """The last prune stopped at its cap with rows still to go."""
        return bool(
            (self._storage is not None and self._storage.behind)
            or (self._retention is not None and self._retention.behind)
        )

    async def prune(self) -> int:
        """The change log's old rows no host webhook needs (DR-35), old recorded deliveries and
        expired OAuth states (DR-41): how many change log rows went."""
        if self._storage is not None:
            try:
                done = await self._storage.prune()
            except Exception as exc:  # the change log's turn still comes
                log.warning("worker.storage_prune_failed", error=type(exc).__name__)
            else:
                if any(done.values()):
                    log.info("worker.storage_pruned", **done)
        if self._retention is None:
            return 0
        try:
            pruned = await self._retention.prune()
        except Exception as exc:  # tried again on the next turn
            log.warning("worker.change_log_prune_failed", error=type(exc).__name__)
            return 0
        if pruned:
            log.info("worker.change_log_pruned", rows=pruned)
        return pruned

    def _now(self) -> datetime | None:
        return self._clock.now() if self._clock is not None else None

    async def sweep_outages(self, batches: int | None = None) -> int:
        """After an outage of the webhook endpoint, its follow-up (DR-45): up to `batches`
        batches (None: until none is left) of connections made due for a subscription check
        and a reconciliation; how many. The run loop sweeps one batch a turn, so its claims
        and heartbeats go on beside a long sweep."""
        if self._webhook_health is None:
            return 0
        total, done = 0, 0
        try:
            while batches is None or done < batches:
                swept = await self._webhook_health.sweep(self._now())
                done += 1
                if not swept:
                    break
                total += swept
        except Exception as exc:  # tried again on the next turn
            log.warning("worker.outage_sweep_failed", error=type(exc).__name__)
        if total:
            log.info("worker.outage_swept", connections=total)
        return total

    async def run_once(self) -> int:
        """Claim what is due (up to the free slots), handle it all; returns how many."""
        before = set(self._running)
        claimed = await self._start(self._capacity - len(self._running))
        started = self._running - before
        if started:
            await asyncio.gather(*started)
        return claimed

    async def _start(self, slots: int) -> int:
        try:
            claimed = await self._queue.claim(
                owner=self.owner,
                limit=slots,
                lease_seconds=self._settings.worker.lease_seconds,
                now=self._now(),
            )
        except Exception as exc:  # the loop outlives a database outage
            log.warning("worker.claim_failed", error=type(exc).__name__)
            return 0
        for due in claimed:
            task = asyncio.create_task(self._handle(due), name=f"maintain:{due.connection_id}")
            self._running.add(task)
            task.add_done_callback(self._done)
        return len(claimed)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._finished.set()

    async def _pause(self, stop: asyncio.Event, seconds: float) -> None:
        """Until `stop`, a slot frees up (since the last claim), or `seconds` pass."""
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._finished.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _handle(self, due: MaintenanceDue) -> None:
        result_logged = False
        try:
            result = await self._maintain(due)
        except Exception as exc:  # one connection never stops the worker
            result = self._maintain.failed(due, exc)
            unreadable = isinstance(exc, StoredSecretUnreadable)
            if due.failures == 0 and unreadable:
                # The operator's to fix: said once per connection, with the fix, no traceback;
                # the connection's status and the doctor keep showing it meanwhile.
                log.error(
                    "worker.stored_secret_unreadable",
                    connection_id=due.connection_id,
                    error=str(exc),
                    fix=StoredSecretUnreadable.FIX,
                )
            elif due.failures == 0:  # the first time with its traceback, then one line a step
                log.exception(
                    "worker.maintenance_failed", connection_id=due.connection_id, failures=1
                )
            result_logged = unreadable
        if result.error and not result_logged:
            log.warning(
                "worker.maintenance_error",
                connection_id=due.connection_id,
                error=result.error,
                failures=due.failures if result.rate_limited else due.failures + 1,
                retry_at=result.retry_at.isoformat() if result.retry_at else None,
            )
        await self._complete(due, result)
        self.handled += 1

    async def _complete(self, due: MaintenanceDue, result: MaintenanceResult) -> None:
        """Record the pass; while the database is away, try again (0.25 s doubling to 5 s)
        until the lease would have run out anyway. A pass that ends during an outage then
        frees its connection as soon as the database is back, not a whole lease later."""
        deadline = time.monotonic() + self._settings.worker.lease_seconds
        delay = 0.25
        while True:
            try:
                await self._queue.complete(due, self.owner, result)
                return
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    log.warning("worker.complete_failed", error=type(exc).__name__)
                    return  # the lease runs out and the connection is claimed again
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    @staticmethod
    async def _safely(work: Awaitable[object]) -> None:
        try:
            await work
        except Exception as exc:  # retried on the next round
            log.warning("worker.step_failed", error=type(exc).__name__)


# A worker never sleeps long on a token's rate budget: past this it gives the slot back and
# the connection comes back when the window has reset (RateLimited -> retry_at).
WORKER_RATE_LIMIT_WAIT = 2.0


async def build_worker(
    container: Container, settings: Settings, clock: Clock | None = None
) -> Worker:
    """The worker on the container's adapters; `clock` only where a day is simulated (else
    the database's clock says what is due)."""
    container.calendly.add_kwargs(max_rate_limit_wait=WORKER_RATE_LIMIT_WAIT)
    return Worker(
        queue=await resolve(container.maintenance_queue()),
        maintain=await resolve(container.maintain_connection()),
        settings=settings,
        retention=await resolve(container.change_log_retention()),
        storage=await resolve(container.storage_retention()),
        clock=clock,
        webhook_health=await resolve(container.webhook_health()),
    )


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    tracing = start_tracing(settings.tracing, default_service_name=WORKER_SERVICE_NAME)
    container = Container(settings=settings)
    if tracing is not None:  # a client span for each call to Calendly (DR-40)
        container.calendly.add_kwargs(spans=tracing.calendly_spans)
    stop = stop or asyncio.Event()
    with stopped_by_signals(stop):
        try:
            worker = await build_worker(container, settings)
            await worker.run(stop)
        finally:
            await drain_kept_grants(container)
            await resolve(container.shutdown_resources())
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """`calendly-connect worker`, configured from `environ`."""
    argparse.ArgumentParser(
        prog="calendly-connect worker",
        description="Keep every connection healthy: grant checks, subscription repair, "
        "reconciliation and polling for free plans. Safe to run many at once.",
    ).parse_args(argv)
    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        return fail(str(exc))
    configure_service_logging(settings)
    try:
        asyncio.run(run_worker(settings))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        return fail(f"cannot start: {exc}", 1)
    except TracingUnavailable as exc:
        return fail(str(exc), 1)
    return 0
