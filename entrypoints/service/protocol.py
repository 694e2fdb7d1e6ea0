"""uvicorn's HTTP protocol (httptools), sending what one turn of the event loop wrote at once.

uvicorn writes a response's status line and headers to the socket as soon as the app sends
`http.response.start`, and its body at `http.response.body`: two system calls and, with
Nagle's algorithm off (uvicorn sets TCP_NODELAY), two TCP segments for every small answer,
which the client then reads one at a time. Here the protocol's writes during one turn of the
loop go out together at the end of that turn: a webhook's answer (its headers and body sent
back to back) leaves in one write and one segment. A write waits for nothing but the end of
that turn (on uvloop, after the I/O callbacks of its next poll at most), and is sent at once
when much is held, when the transport closes or when the peer half-closes (`TurnWrites`).
Measured (ARCHITECTURE.md, DR-58): the bare endpoint of benchmark 1 answered 24 % more
requests a second on 2 processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Data = bytes | bytearray | memoryview
# What is held is sent at once from this size on: the high-water mark of uvicorn's flow
# control, which pauses a sender only once the transport itself holds that much.
FLUSH_AT = 64 * 1024


class TurnWrites(asyncio.Transport):
    """A transport's writes of one turn of the loop, sent in one write at the turn's end.

    Everything else is the transport's own. What is held is sent at once when it reaches
    `FLUSH_AT` bytes (a body sent in many parts without a pause still meets the transport's
    flow control), when the transport closes, and when the peer half-closes (`eof_received`):
    a closing transport still sends what it is given until the connection is lost, and so
    does this. Only once the connection is lost (`lose`) is what is held dropped, as the
    transport drops its buffer then; an abort drops it too. Data is copied unless it is
    `bytes`, so a caller may reuse its buffer at once, as with the transport itself.
    """

    __slots__ = ("_held", "_held_size", "_loop", "_lost", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_size = 0
        self._lost = False

    # ------------------------------------------------------------------ held writes
    def write(self, data: Data) -> None:
        if not data or self._lost:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        if self._transport.is_closing():  # closing: nothing more to gather, send it now
            self.flush()
            self._transport.write(data)
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size >= FLUSH_AT:
            self.flush()

    def writelines(self, list_of_data: Iterable[Data]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send what is held now: at the end of the turn, or sooner (see the class)."""
        held = self._held
        if not held:
            return
        self._held = []
        self._held_size = 0
        if not self._lost:
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def lose(self) -> None:
        """The connection is lost: what is held can no longer be sent."""
        self._lost = True
        self._held = []
        self._held_size = 0

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self.lose()
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._held_size + self._transport.get_write_buffer_size()

    # ------------------------------------------------------------------ the transport's own
    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over `TurnWrites` (uvicorn takes it as its `http`)."""

    _turn: TurnWrites

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._turn = TurnWrites(transport, self.loop)
        super().connection_made(self._turn)

    def eof_received(self) -> None:
        # The peer half-closed: the loop closes the transport next. What an answer wrote
        # in this turn goes out first.
        self._turn.flush()
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._turn.lose()
        super().connection_lost(exc)
