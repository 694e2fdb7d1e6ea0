"""`calendly-connect worker`: keeps every connection healthy, safely from many processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import time
from collections.abc import Awaitable

import structlog

from adapters.host_notifications import HostNotifier
from domain.ports import MaintenanceDue, MaintenanceQueue, MaintenanceResult
from domain.usecases.maintain_connection import MaintainConnection
from entrypoints.container import Container, resolve
from entrypoints.settings import Settings

log = structlog.get_logger(__name__)
HEARTBEAT_SECONDS = 15.0


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    """Claims due connections, maintains them concurrently, records the outcome."""

    def __init__(
        self,
        queue: MaintenanceQueue,
        maintain: MaintainConnection,
        notifier: HostNotifier,
        settings: Settings,
        owner: str | None = None,
    ) -> None:
        self._queue = queue
        self._maintain = maintain
        self._notifier = notifier
        self._settings = settings
        self.owner = owner or worker_id()
        self._slots = asyncio.Semaphore(settings.worker_concurrency)
        self.handled = 0

    async def run(self, stop: asyncio.Event) -> None:
        log.info("worker.started", worker=self.owner)
        last_beat = 0.0
        while not stop.is_set():
            if time.monotonic() - last_beat > HEARTBEAT_SECONDS:
                await self._safely(self._queue.heartbeat(self.owner))
                await self._safely(self._notifier.deliver_pending())
                last_beat = time.monotonic()
            claimed = await self.run_once()
            if not claimed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._settings.worker_poll_seconds)
        log.info("worker.stopped", worker=self.owner, handled=self.handled)

    async def run_once(self) -> int:
        """One claim-and-work round; returns how many connections it handled."""
        try:
            claimed = await self._queue.claim(
                owner=self.owner,
                limit=self._settings.worker_concurrency * 2,
                lease_seconds=self._settings.worker_lease_seconds,
                refresh_margin_seconds=self._settings.refresh_margin_seconds,
            )
        except Exception as exc:  # the loop outlives a database outage
            log.warning("worker.claim_failed", error=type(exc).__name__)
            return 0
        await asyncio.gather(*(self._handle(due) for due in claimed))
        return len(claimed)

    async def _handle(self, due: MaintenanceDue) -> None:
        async with self._slots:
            try:
                result = await self._maintain(due)
            except Exception as exc:  # one connection never stops the worker
                log.exception("worker.maintenance_failed", connection_id=due.connection_id)
                result = MaintenanceResult(error=f"unexpected {type(exc).__name__}")
            if result.error:
                log.warning(
                    "worker.maintenance_error", connection_id=due.connection_id, error=result.error
                )
            await self._safely(self._queue.complete(due, self.owner, result))
            self.handled += 1

    @staticmethod
    async def _safely(work: Awaitable[object]) -> None:
        try:
            await work
        except Exception as exc:  # retried on the next round
            log.warning("worker.step_failed", error=type(exc).__name__)


async def build_worker(container: Container, settings: Settings) -> Worker:
    return Worker(
        queue=await resolve(container.maintenance_queue()),
        maintain=await resolve(container.maintain_connection()),
        notifier=await resolve(container.host_notifier()),
        settings=settings,
    )


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    container = Container(settings=settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        worker = await build_worker(container, settings)
        await worker.run(stop)
    finally:
        await resolve(container.shutdown_resources())
