"""Deliveries written by few processes of this host, handed over by the others (DR-61).

Service processes on one port each receive any user's deliveries (the kernel spreads the
connections). Each process's group commit (DR-48) shares a transaction among the deliveries
it has in hand, so two processes make batches half as large as one would, twice as many
transactions per delivery, and each batch waits for the locks of its users that the other's
batch holds (DR-33). Here the processes that listen in one directory agree on the writers
among them (the first `writers` by name; by default one), and a delivery arriving at any
process is verified and decoded there, as before, then handed over a Unix socket to its
user's writer (rendezvous hashing among the writers), which writes it in one of its own
batches and answers once committed. The CPU-heavy part of a delivery stays spread over the
processes; its write joins the writer's batches.

It is an optimisation only, never needed for correctness: the locks still order every
write. Whatever goes wrong with a hand-off (no such process, a lost connection, no answer in
time, an error on the other side), the receiving process writes the delivery itself. The
delivery's id makes that safe even when the other process wrote it after all: the second
write is a duplicate and writes nothing. Processes that disagree for a moment on who listens
(one started or stopped within the last rescan) only cost some waiting, and a delivery is
handed over at most once: one handed over is written where it arrives.

Only processes of this host's user may connect (the socket's peer credentials are checked,
and the directory must be the user's own, closed to others): a delivery arriving here has
been verified, and nobody else may add one. The signing key is not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import hashlib
import os
import secrets
import socket
import stat
import struct
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import cast

import msgspec
import structlog

from domain.errors import RouteChanged
from domain.ports import DeliveryLedger, DeliveryRecord, Route

log = structlog.get_logger(__name__)

SUFFIX = ".sock"
# How many of the processes write (the first ones by name): one makes the largest batches.
WRITERS = 1
# How often a process looks again at who listens in the directory.
RESCAN_SECONDS = 1.0
# How long a delivery handed over may wait for its answer before its receiver writes it
# itself. A batch takes milliseconds; one that falls back to writing each delivery alone
# waits 250 ms for a lock at most (group_commit.LOCK_TIMEOUT_MS) before its own writes.
ANSWER_SECONDS = 5.0
# A process that could not be reached is left out of the owners for this long.
DOWN_SECONDS = 5.0
# Owners found per user, kept until the members change (then found again) or this many.
OWNERS_KEPT = 100_000
# A frame larger than this ends the connection (a delivery's body is far smaller).
MAX_FRAME = 64 * 1024 * 1024
_CREDENTIALS = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid


class HandOffRefused(Exception):
    """The directory is not one the hand-off may listen in (says why)."""


class _Ask(msgspec.Struct, array_like=True, frozen=True):
    id: int
    delivery: DeliveryRecord


class _Told(msgspec.Struct, array_like=True, frozen=True):
    id: int
    # Committed, and whether it was new (False: a duplicate). None with no `changed`: the
    # owner could not write it (the asker writes it itself).
    recorded: bool | None = None
    # Nothing written: the route it was judged by has changed (RouteChanged's connection).
    changed: str | None = None


_encode = msgspec.msgpack.Encoder().encode
_decode_ask = msgspec.msgpack.Decoder(_Ask).decode
_decode_told = msgspec.msgpack.Decoder(_Told).decode


class PeerLost(Exception):
    """The connection to the owning process ended before it answered."""


def owner_of(user_id: str, writers: Sequence[str]) -> str:
    """The writer that writes `user_id`'s deliveries (rendezvous hashing: a writer joining or
    leaving moves only the users it gains or had)."""
    if len(writers) == 1:
        return writers[0]
    return max(writers, key=partial(_weight, user_id))


def _weight(user_id: str, member: str) -> bytes:
    return hashlib.blake2b(f"{member}\n{user_id}".encode(), digest_size=8).digest()


def check_directory(directory: Path) -> None:
    """HandOffRefused unless `directory` is a directory of this user's, closed to others (who
    could otherwise hand over deliveries nobody verified)."""
    try:
        info = directory.stat()
    except OSError as exc:
        raise HandOffRefused(f"{directory} cannot be read ({exc.strerror})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise HandOffRefused(f"{directory} is not a directory")
    if info.st_uid != os.getuid():
        raise HandOffRefused(f"{directory} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o077:
        raise HandOffRefused(
            f"{directory} is open to other users (mode {stat.S_IMODE(info.st_mode):o}); "
            "make it the service user's alone: chmod 700"
        )


class _Framed(asyncio.Protocol):
    """Length-prefixed frames both ways; the frames sent in one turn of the loop go out in
    one write."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport's subclasses, but have its methods)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            size = int.from_bytes(buffer[:4], "big")
            if size > MAX_FRAME:
                self._abort("a frame too large")
                return
            if len(buffer) < 4 + size:
                return
            frame = bytes(buffer[4 : 4 + size])
            del buffer[: 4 + size]
            try:
                self.frame_received(frame)
            except msgspec.DecodeError:
                self._abort("a frame that does not decode")
                return

    def frame_received(self, frame: bytes) -> None:
        raise NotImplementedError

    def send(self, body: bytes) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(len(body).to_bytes(4, "big"))
        self._out.append(body)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def _abort(self, why: str) -> None:
        log.warning("hand_off.connection_dropped", reason=why)
        if self.transport is not None:
            self.transport.abort()


class _Serving(_Framed):
    """A connection from another process: its deliveries written here, each answered once
    committed (or failed)."""

    def __init__(self, owner: HandOffLedger) -> None:
        super().__init__()
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._owner.serving.add(self)
        sock = transport.get_extra_info("socket")
        uid = -1
        with contextlib.suppress(OSError, AttributeError):
            uid = _CREDENTIALS.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
            )[1]
        if uid != os.getuid():
            self._abort("a process of another user")

    def frame_received(self, frame: bytes) -> None:
        ask = _decode_ask(frame)
        task = self._owner.serve(ask.delivery)
        task.add_done_callback(partial(self._answer, ask.id))

    def _answer(self, ask_id: int, task: asyncio.Task[bool]) -> None:
        told = _Told(ask_id)
        if not task.cancelled():
            error = task.exception()
            if error is None:
                told = _Told(ask_id, recorded=task.result())
            elif isinstance(error, RouteChanged):
                told = _Told(ask_id, changed=error.connection_id)
        self.send(_encode(told))

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.serving.discard(self)

    def close(self) -> None:
        """After what is answered has been sent."""
        self._flush()
        if self.transport is not None:
            self.transport.close()


class _Link(_Framed):
    """This process's connection to another: deliveries asked, answers awaited, each for
    `answer_seconds` at most (then TimeoutError; one timer for all, not one per delivery)."""

    def __init__(self, answer_seconds: float) -> None:
        super().__init__()
        self._answer_seconds = answer_seconds
        # In the order asked, so in the order of their deadlines (loop time).
        self._waiting: dict[int, tuple[asyncio.Future[_Told], float]] = {}
        self._next = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self.lost = False

    def ask(self, delivery: DeliveryRecord) -> asyncio.Future[_Told]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Told] = loop.create_future()
        if self.lost:
            future.set_exception(PeerLost())
            return future
        self._next += 1
        self._waiting[self._next] = (future, loop.time() + self._answer_seconds)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._answer_seconds, self._sweep)
        self.send(_encode(_Ask(self._next, delivery)))
        return future

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for ask_id, (future, deadline) in list(self._waiting.items()):
            if deadline > now:
                self._sweeper = loop.call_at(deadline, self._sweep)
                return
            del self._waiting[ask_id]
            if not future.done():
                future.set_exception(TimeoutError())

    def frame_received(self, frame: bytes) -> None:
        told = _decode_told(frame)
        waiting = self._waiting.pop(told.id, None)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(told)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for future, _ in self._waiting.values():
            if not future.done():
                future.set_exception(PeerLost())
        self._waiting.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class HandOffLedger(DeliveryLedger):
    """`inner` (this process's ledger) for what this process writes, a writer's for the
    others (see the module's text). `start()` before use, `stop()` after."""

    def __init__(
        self,
        inner: DeliveryLedger,
        directory: Path,
        *,
        name: str | None = None,
        writers: int = WRITERS,
        rescan_seconds: float = RESCAN_SECONDS,
        answer_seconds: float = ANSWER_SECONDS,
        down_seconds: float = DOWN_SECONDS,
    ) -> None:
        self._inner = inner
        self._directory = directory
        self.me = name or f"{os.getpid()}-{secrets.token_hex(4)}"
        self._path = directory / f"{self.me}{SUFFIX}"
        self._rescan_seconds = rescan_seconds
        self._answer_seconds = answer_seconds
        self._down_seconds = down_seconds
        if writers < 1:
            raise ValueError("writers must be at least 1")
        self._writers = writers
        self.members: tuple[str, ...] = (self.me,)  # who listens, by name
        self.writers: tuple[str, ...] = (self.me,)  # the first `writers` of them
        self._owners: dict[str, str] = {}  # user -> their writer, as found
        self._down: dict[str, float] = {}  # member -> until when (loop time) it is left out
        self._links: dict[str, _Link] = {}
        self._connecting: dict[str, asyncio.Future[_Link | None]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._rescan: asyncio.TimerHandle | None = None
        self._served: set[asyncio.Task[bool]] = set()
        self.serving: set[_Serving] = set()  # connections from other processes
        # Figures (for tests and benchmarks): handed over and answered by their owner; written
        # here after a hand-off failed; written here for another process.
        self.handed = 0
        self.fell_back = 0
        self.served = 0

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        check_directory(self._directory)
        self._server = await asyncio.get_running_loop().create_unix_server(
            partial(_Serving, self), path=str(self._path)
        )
        self._path.chmod(0o600)
        self._look()

    async def stop(self) -> None:
        """Stop taking deliveries from others, answer those taken, close the links."""
        if self._rescan is not None:
            self._rescan.cancel()
            self._rescan = None
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
            self._server = None
        while self._served:
            await asyncio.gather(*self._served, return_exceptions=True)
        await asyncio.sleep(0)  # their answers are queued: send them before closing
        for serving in list(self.serving):
            serving.close()
        for link in self._links.values():
            link.close()
        self._links.clear()

    # ---------------------------------------------------------------- the ledger
    async def route(
        self,
        *,
        webhook_token: str | None = None,
        calendly_user_uris: Sequence[str] = (),
        fresh: bool = False,
    ) -> Route | None:
        return await self._inner.route(
            webhook_token=webhook_token, calendly_user_uris=calendly_user_uris, fresh=fresh
        )

    async def record(self, delivery: DeliveryRecord) -> bool:
        route = delivery.route
        if route is None or self.writers == (self.me,):
            return await self._inner.record(delivery)
        owner = self._owners.get(route.user_id)
        if owner is None:
            if len(self._owners) >= OWNERS_KEPT:
                self._owners.clear()
            owner = self._owners[route.user_id] = owner_of(route.user_id, self.writers)
        if owner == self.me:
            return await self._inner.record(delivery)
        link = await self._link_to(owner)
        if link is None:
            self.fell_back += 1
            return await self._inner.record(delivery)
        # The owner needs the route's connection and version, not its signing key.
        sent = msgspec.structs.replace(
            delivery, route=msgspec.structs.replace(route, signing_key=None)
        )
        try:
            told = await link.ask(sent)
        except (PeerLost, TimeoutError):
            told = None
        if told is not None and told.changed is not None:
            raise RouteChanged(told.changed)
        if told is None or told.recorded is None:
            self.fell_back += 1
            return await self._inner.record(delivery)
        self.handed += 1
        return told.recorded

    # ---------------------------------------------------------------- serving others
    def serve(self, delivery: DeliveryRecord) -> asyncio.Task[bool]:
        """Write a delivery another process handed over (never handed on)."""
        self.served += 1
        task = asyncio.create_task(self._inner.record(delivery), context=contextvars.Context())
        self._served.add(task)
        task.add_done_callback(self._served.discard)
        return task

    # ---------------------------------------------------------------- who listens
    def _look(self) -> None:
        """Who listens in the directory now; again after `rescan_seconds`."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._down = {m: until for m, until in self._down.items() if until > now}
        found = {self.me}
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._directory):
                if entry.name.endswith(SUFFIX):
                    member = entry.name.removesuffix(SUFFIX)
                    if member not in self._down:
                        found.add(member)
        members = tuple(sorted(found))
        if members != self.members:
            self._members_are(members)
        for gone in set(self._links) - found:
            self._links.pop(gone).close()
        self._rescan = loop.call_later(self._rescan_seconds, self._look)

    def _left_out(self, member: str) -> None:
        self._down[member] = asyncio.get_running_loop().time() + self._down_seconds
        self._members_are(tuple(m for m in self.members if m != member) or (self.me,))

    def _members_are(self, members: tuple[str, ...]) -> None:
        self.members = members
        self.writers = members[: self._writers]
        self._owners.clear()
        log.info("hand_off.members", members=len(members), writing=self.me in self.writers)

    async def _link_to(self, member: str) -> _Link | None:
        link = self._links.get(member)
        if link is not None and not link.lost:
            return link
        connecting = self._connecting.get(member)
        if connecting is None:
            connecting = asyncio.ensure_future(self._connect(member))
            self._connecting[member] = connecting
            connecting.add_done_callback(lambda _: self._connecting.pop(member, None))
        return await asyncio.shield(connecting)

    async def _connect(self, member: str) -> _Link | None:
        path = self._directory / f"{member}{SUFFIX}"
        try:
            _, link = await asyncio.get_running_loop().create_unix_connection(
                partial(_Link, self._answer_seconds), str(path)
            )
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:  # nobody listens: a process that died
                with contextlib.suppress(OSError):
                    path.unlink()
            log.info("hand_off.unreachable", member=member, reason=exc.strerror)
            self._left_out(member)
            return None
        self._links[member] = link
        return link
