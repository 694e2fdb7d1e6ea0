"""The service's HTTP protocol sends a response written in one turn of the loop in one write
(entrypoints/service/protocol.py): uvicorn's own wrote the headers and the body apart, two
system calls and two TCP segments for every webhook's answer."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from entrypoints.service.protocol import OneWriteHttpToolsProtocol, TurnWrites


class Recording(asyncio.Transport):
    """A transport that keeps what was written to it, each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: Any) -> None:
        assert not self.closing, "written after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def a_turn() -> None:
    """Let the callbacks due now run (the held writes' flush among them)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_the_writes_of_one_turn_leave_together_and_the_next_turns_apart() -> None:
    raw = Recording()
    held = TurnWrites(raw, asyncio.get_running_loop())
    held.write(b"HTTP/1.1 200 OK\r\n\r\n")
    held.write(b"")  # nothing: no write of its own
    held.writelines([b"{", memoryview(b'"ok"'), bytearray(b"}")])
    assert raw.writes == []
    assert held.get_write_buffer_size() == len(b'HTTP/1.1 200 OK\r\n\r\n{"ok"}')
    await a_turn()
    assert raw.writes == [b'HTTP/1.1 200 OK\r\n\r\n{"ok"}']
    held.write(b"next")
    await a_turn()
    assert raw.writes[1:] == [b"next"]


async def test_a_close_sends_what_is_held_first_and_an_abort_drops_it() -> None:
    raw = Recording()
    held = TurnWrites(raw, asyncio.get_running_loop())
    held.write(b"last words")
    held.close()
    assert raw.writes == [b"last words"]
    assert raw.closing
    await a_turn()  # the flush due at the turn's end finds nothing more
    assert raw.writes == [b"last words"]

    raw = Recording()
    held = TurnWrites(raw, asyncio.get_running_loop())
    held.write(b"never sent")
    held.abort()
    await a_turn()
    assert raw.writes == []
    assert raw.aborted


async def test_what_is_held_when_the_peer_went_away_is_dropped() -> None:
    raw = Recording()
    held = TurnWrites(raw, asyncio.get_running_loop())
    held.write(b"too late")
    raw.closing = True  # the connection was lost meanwhile
    await a_turn()
    assert raw.writes == []


async def _app(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await receive()
    body = b'{"outcome":"applied"}'
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _answer(protocol_class: type[HttpToolsProtocol]) -> list[bytes]:
    """The writes one request on a keep-alive connection is answered with."""
    config = uvicorn.Config(_app, http=protocol_class, lifespan="off", log_config=None)
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    raw = Recording()
    protocol.connection_made(raw)
    protocol.data_received(
        b"POST /webhooks/calendly HTTP/1.1\r\nHost: service\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    for _ in range(50):
        await a_turn()
        if raw.writes and raw.writes[-1].endswith(b"}"):
            break
    protocol.connection_lost(None)
    return raw.writes


async def test_the_service_protocol_answers_a_request_in_one_write() -> None:
    writes = await _answer(OneWriteHttpToolsProtocol)
    assert len(writes) == 1, writes
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[0].endswith(b'\r\n\r\n{"outcome":"applied"}')


async def test_uvicorns_own_protocol_answers_it_in_two() -> None:
    # What the service's protocol is for: should uvicorn one day write a response at once,
    # this fails, and the protocol can go.
    writes = await _answer(HttpToolsProtocol)
    assert len(writes) == 2, writes
    assert writes[1] == b'{"outcome":"applied"}'
