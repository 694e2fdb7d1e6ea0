"""uvicorn's HTTP protocol (httptools), sending what one turn of the event loop wrote at once.

uvicorn writes a response's status line and headers to the socket as soon as the app sends
`http.response.start`, and its body at `http.response.body`: two system calls and, with
Nagle's algorithm off (uvicorn sets TCP_NODELAY), two TCP segments for every small answer,
which the client then reads one at a time. Here the protocol's writes during one turn of the
loop go out together at the end of that turn: a webhook's answer (its headers and body sent
back to back) leaves in one write and one segment. No write waits for anything but the
callbacks already due in that turn. Measured (ARCHITECTURE.md, DR-58): the bare endpoint of
benchmark 1 answered 24 % more requests a second on 2 processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Data = bytes | bytearray | memoryview


class TurnWrites(asyncio.Transport):
    """A transport's writes of one turn of the loop, sent in one write at the turn's end.

    Everything else is the transport's own. Closing sends what is held first, as a close sends
    the transport's buffer; aborting drops it, as an abort drops the buffer. What is held when
    the transport is already closing is dropped (the peer is gone).
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[Data] = []

    # ------------------------------------------------------------------ held writes
    def write(self, data: Data) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def writelines(self, list_of_data: Iterable[Data]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send what is held now: at the end of the turn, or before a close."""
        held = self._held
        if not held:
            return
        self._held = []
        if self._transport.is_closing():
            return
        self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return sum(len(data) for data in self._held) + self._transport.get_write_buffer_size()

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

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(TurnWrites(transport, self.loop))
