"""Webhook delivery as Calendly does it: signed POSTs, retried with back-off, then `disabled`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import msgspec

from .model import NoShow, iso
from .world import Notification, World

DeliveryState = Literal["held", "sending", "retrying", "delivered", "failed", "abandoned"]
ReleaseOrder = Literal["fifo", "reverse", "shuffle"]


def sign(key: str, timestamp: int, body: bytes) -> str:
    """`Calendly-Webhook-Signature` for `body`: `t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`."""
    mac = hmac.new(key.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


@dataclass
class Attempt:
    at: float
    status: int | None
    error: str | None
    duration_ms: float


@dataclass
class Delivery:
    id: int
    subscription_id: str
    callback_url: str
    event: str
    payload_uri: str
    body: bytes
    state: DeliveryState
    copy: int = 0
    attempts: list[Attempt] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subscription": self.subscription_id,
            "callback_url": self.callback_url,
            "event": self.event,
            "payload_uri": self.payload_uri,
            "copy": self.copy,
            "state": self.state,
            "attempts": [
                {
                    "at": iso(a.at),
                    "status": a.status,
                    "error": a.error,
                    "duration_ms": round(a.duration_ms, 1),
                }
                for a in self.attempts
            ],
            "body": self.body.decode("utf-8"),
        }


class Deliverer:
    """Turns notifications into deliveries and carries them out in the background."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.log: list[Delivery] = []
        self.held: list[Delivery] = []
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._sending = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------- intake
    def enqueue(
        self, notes: Iterable[Notification | tuple[Notification, NoShow]]
    ) -> asyncio.Task[None] | None:
        """Build the deliveries for `notes` (in order) and start sending them in that order."""
        batch: list[Delivery] = []
        for item in notes:
            note, removed = item if isinstance(item, tuple) else (item, None)
            payload = self.world.webhook_payload(note, removed)
            for sub in self.world.subscribers(note):
                envelope = {
                    "event": note.event,
                    "created_at": iso(note.created_at),
                    "created_by": self.world.user_uri(sub.creator_id),
                    "payload": payload,
                }
                body = msgspec.json.encode(envelope)
                for copy in range(1 + self.world.settings.duplicate_deliveries):
                    batch.append(
                        Delivery(
                            id=next(self._ids),
                            subscription_id=sub.id,
                            callback_url=sub.callback_url,
                            event=note.event,
                            payload_uri=payload["uri"],
                            body=body,
                            state="held",
                            copy=copy,
                        )
                    )
        self.log.extend(batch)
        if not batch:
            return None
        if self.world.settings.hold_deliveries:
            self.held.extend(batch)
            return None
        return self._spawn(self._send_in_order(batch))

    def release(self, order: ReleaseOrder, seed: int | None = None) -> asyncio.Task[None] | None:
        batch, self.held = self.held, []
        if order == "reverse":
            batch.reverse()
        elif order == "shuffle":
            random.Random(seed).shuffle(batch)
        if not batch:
            return None
        return self._spawn(self._send_in_order(batch))

    async def wait_idle(self, seconds: float) -> bool:
        """Wait until no first attempt is in flight; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def redeliver(self, delivery: Delivery) -> asyncio.Task[None]:
        """Send a logged delivery once more with a fresh signature (a Calendly retry)."""
        copy = Delivery(
            id=next(self._ids),
            subscription_id=delivery.subscription_id,
            callback_url=delivery.callback_url,
            event=delivery.event,
            payload_uri=delivery.payload_uri,
            body=delivery.body,
            state="held",
            copy=delivery.copy + 1,
        )
        self.log.append(copy)
        return self._spawn(self._send_in_order([copy]))

    # ------------------------------------------------------------ sending
    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send_in_order(self, batch: list[Delivery]) -> None:
        self._sending += 1
        self._idle.clear()
        try:
            for delivery in batch:
                delivery.state = "sending"
                ok = await self._attempt(delivery)
                if ok:
                    continue
                if not self._start_retrying(delivery):
                    continue
                self._spawn(self._retry(delivery))
        finally:
            self._sending -= 1
            if self._sending == 0:
                self._idle.set()

    def _start_retrying(self, delivery: Delivery) -> bool:
        sub = self.world.subscriptions.get(delivery.subscription_id)
        if sub is None or sub.state != "active":
            delivery.state = "abandoned"
            return False
        self.world.subscription_retrying(sub)
        delivery.state = "retrying"
        return True

    async def _retry(self, delivery: Delivery) -> None:
        settings = self.world.settings
        waited = 0.0
        delay = settings.retry_base
        while True:
            if waited + delay > settings.retry_window:
                self._give_up(delivery)
                return
            await asyncio.sleep(delay * settings.delivery_time_scale)
            waited += delay
            delay *= 2
            sub = self.world.subscriptions.get(delivery.subscription_id)
            if sub is None or sub.state != "active":
                delivery.state = "abandoned"
                return
            if await self._attempt(delivery):
                return

    def _give_up(self, delivery: Delivery) -> None:
        delivery.state = "failed"
        sub = self.world.subscriptions.get(delivery.subscription_id)
        if sub is not None and sub.state == "active":
            self.world.disable_subscription(sub)

    async def _attempt(self, delivery: Delivery) -> bool:
        assert self._session is not None, "Deliverer.start() was not awaited"
        sub = self.world.subscriptions.get(delivery.subscription_id)
        headers = {"Content-Type": "application/json", "User-Agent": "Calendly-Sandbox-Webhooks"}
        key = self.world.signing_key(sub) if sub is not None else None
        if key is not None:
            # Signed at send time with the real clock: the receiver checks `t` against its own.
            headers["Calendly-Webhook-Signature"] = sign(key, int(time.time()), delivery.body)
        settings = self.world.settings
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.delivery_connect_timeout,
            sock_read=settings.delivery_read_timeout,
        )
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            async with self._session.post(
                delivery.callback_url,
                data=delivery.body,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        delivery.attempts.append(
            Attempt(
                at=self.world.clock.now(),
                status=status,
                error=error,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        )
        ok = status is not None and 200 <= status < 300
        if ok:
            delivery.state = "delivered"
            if sub is not None:
                self.world.subscription_delivered(sub)
        return ok
