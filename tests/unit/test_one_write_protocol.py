"""The service's HTTP protocol sends a response written in one turn of the loop in one write
(entrypoints/service/protocol.py): uvicorn's own wrote the headers and the body apart, two
system calls and two TCP segments for every webhook's answer."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from entrypoints.service.protocol import FLUSH_AT, OneWriteHttpToolsProtocol, TurnWrites


class Recording(asyncio.Transport):
    """A transport that keeps what was written to it, each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: Any) -> None:
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


async def test_a_closing_transport_gets_what_is_written_until_the_connection_is_lost() -> None:
    # A peer that half-closes (sends its EOF after the request) makes the loop close the
    # transport, which still sends what it is given; only a lost connection drops it.
    raw = Recording()
    held = TurnWrites(raw, asyncio.get_running_loop())
    held.write(b"held before the close")
    raw.closing = True
    held.write(b", then written")  # at once: the close may complete any moment
    assert raw.writes == [b"held before the close", b", then written"]
    held.write(b"more")
    await a_turn()
    assert raw.writes[2:] == [b"more"]
    held.lose()
    held.write(b"after the loss")
    await a_turn()
    assert raw.writes[3:] == []


async def test_much_held_is_sent_at_once_so_flow_control_still_sees_it() -> None:
    raw = Recording()
    held = TurnWrites(raw, asyncio.get_running_loop())
    part = b"x" * (FLUSH_AT // 4)
    for _ in range(4):
        held.write(part)  # a sender that never pauses within the turn
    assert raw.writes == [part * 4]
    held.write(b"tail")
    assert held.get_write_buffer_size() == 4
    await a_turn()
    assert raw.writes[1:] == [b"tail"]


async def test_a_buffer_reused_after_its_write_does_not_change_what_is_sent() -> None:
    raw = Recording()
    held = TurnWrites(raw, asyncio.get_running_loop())
    buffer = bytearray(b"A" * 4)
    held.write(buffer)
    buffer[:] = b"B" * 4
    held.write(memoryview(buffer))
    await a_turn()
    assert raw.writes == [b"AAAABBBB"]


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
    answered = list(raw.writes)  # before the connection ends (which would flush too)
    protocol.connection_lost(None)
    return answered


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


async def test_a_peer_that_half_closes_after_its_request_still_gets_the_answer() -> None:
    # A real server on a socket: the client sends its request and its EOF together (as
    # `nc -N` or some HTTP/1.0 clients do), and the loop closes the transport before the app
    # has answered. uvicorn's own protocol answers such a client; so must the service's.
    config = uvicorn.Config(
        _app, http=OneWriteHttpToolsProtocol, lifespan="off", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        for _ in range(1000):  # up to 10 s
            if server.started:
                break
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        writer.write(
            b"POST /webhooks/calendly HTTP/1.1\r\nHost: service\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        listener.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert answer.endswith(b'{"outcome":"applied"}'), answer
