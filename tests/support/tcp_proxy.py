"""A small asyncio TCP proxy on loopback that can delay, reset or black-hole connections.

It sits in front of a server the tests started themselves (the Calendly sandbox) and decides per
accepted connection what happens to it. Faults are queued for the *next* connections and used
up one connection each, so they are bounded in count; a black-holed connection is held at most
`hold_limit` seconds, and `close()` drops everything still open. Clients should not reuse
connections (`aiohttp.TCPConnector(force_close=True)`) when a test needs "the next request" and
"the next connection" to be the same thing.

Per connection, one of:

- pass through (optionally after a delay),
- reset on accept: RST (SO_LINGER 0) before anything reaches the upstream,
- reset on response: the request reaches the upstream, which answers; the client gets an RST
  instead of the answer (the upstream did the work, the client cannot know),
- black hole: accepted, read and never answered (nothing reaches the upstream),
- swallow response: the request reaches the upstream; its answer is never delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

CHUNK = 65536


class Fault(enum.Enum):
    PASS = "pass"
    RESET_ON_ACCEPT = "reset_on_accept"
    RESET_ON_RESPONSE = "reset_on_response"
    BLACK_HOLE = "black_hole"
    SWALLOW_RESPONSE = "swallow_response"


@dataclass(frozen=True)
class Plan:
    fault: Fault = Fault.PASS
    delay: float = 0.0


@dataclass
class Handled:
    """What the proxy did with one accepted connection."""

    number: int
    plan: Plan
    bytes_up: int = 0
    bytes_down: int = 0
    done: bool = False


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN: SO_LINGER on, zero timeout, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class TcpProxy:
    upstream_host: str
    upstream_port: int
    hold_limit: float = 30.0
    host: str = "127.0.0.1"
    port: int = 0
    handled: list[Handled] = field(default_factory=list)
    _plans: deque[Plan] = field(default_factory=deque)
    _default: Plan = field(default_factory=Plan)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------ steering
    def pass_through(self, *, delay: float = 0.0) -> None:
        """Forget queued faults; from now on every connection passes (after `delay` seconds)."""
        self._plans.clear()
        self._default = Plan(Fault.PASS, delay)

    def reset_next(self, count: int = 1, *, after_request: bool = False) -> None:
        """RST the next `count` connections, on accept or once the upstream has answered."""
        fault = Fault.RESET_ON_RESPONSE if after_request else Fault.RESET_ON_ACCEPT
        self._queue(count, Plan(fault))

    def black_hole_next(self, count: int = 1, *, after_request: bool = False) -> None:
        """Never answer the next `count` connections (held until the client gives up)."""
        fault = Fault.SWALLOW_RESPONSE if after_request else Fault.BLACK_HOLE
        self._queue(count, Plan(fault))

    def delay_next(self, count: int, seconds: float) -> None:
        """Pass the next `count` connections through after `seconds` of added latency."""
        self._queue(count, Plan(Fault.PASS, seconds))

    def _queue(self, count: int, plan: Plan) -> None:
        if not 0 < count <= 100:
            raise ValueError("a fault applies to between 1 and 100 connections")
        self._plans.extend([plan] * count)

    @property
    def pending_faults(self) -> int:
        return len(self._plans)

    def faults_seen(self, fault: Fault) -> int:
        return sum(1 for h in self.handled if h.plan.fault is fault)

    # ------------------------------------------------------------ running
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        plan = self._plans.popleft() if self._plans else self._default
        record = Handled(number=len(self.handled) + 1, plan=plan)
        self.handled.append(record)
        try:
            await asyncio.wait_for(self._serve(plan, record, reader, writer), self.hold_limit)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # Cancelled by close(): asyncio's server callback would log a cancelled handler as
            # an error, so the handler ends normally instead.
            pass
        finally:
            record.done = True
            if not writer.transport.is_closing():
                writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _serve(
        self,
        plan: Plan,
        record: Handled,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if plan.delay > 0:
            await asyncio.sleep(plan.delay)
        if plan.fault is Fault.RESET_ON_ACCEPT:
            _reset(writer)
            return
        if plan.fault is Fault.BLACK_HOLE:
            while await reader.read(CHUNK):  # until the client gives up (or hold_limit)
                pass
            return
        up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        self._writers.add(up_writer)
        pumps = [
            asyncio.create_task(self._pump_up(reader, up_writer, record)),
            asyncio.create_task(self._pump_down(plan, up_reader, writer, record)),
        ]
        try:
            # Whichever side finishes first (the client hangs up, the upstream closes, a fault
            # fires) ends the connection.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            up_writer.transport.abort()
            self._writers.discard(up_writer)

    @staticmethod
    async def _pump_up(
        reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter, record: Handled
    ) -> None:
        while data := await reader.read(CHUNK):
            record.bytes_up += len(data)
            up_writer.write(data)
            await up_writer.drain()

    @staticmethod
    async def _pump_down(
        plan: Plan,
        up_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: Handled,
    ) -> None:
        while data := await up_reader.read(CHUNK):
            if plan.fault is Fault.RESET_ON_RESPONSE:
                _reset(writer)  # the upstream has answered: the answer is lost
                return
            if plan.fault is Fault.SWALLOW_RESPONSE:
                continue  # the upstream has answered: the client waits for nothing
            record.bytes_down += len(data)
            writer.write(data)
            await writer.drain()
        if plan.fault is Fault.SWALLOW_RESPONSE:
            # The upstream closed; keep the client waiting until it gives up (or hold_limit).
            await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def tcp_proxy(upstream_url: str, *, hold_limit: float = 30.0) -> AsyncIterator[TcpProxy]:
    """A proxy on an ephemeral loopback port in front of `http://host:port`."""
    hostport = upstream_url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        raise ValueError("the proxy only fronts loopback servers")
    proxy = TcpProxy(upstream_host=host.strip("[]"), upstream_port=int(port), hold_limit=hold_limit)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
