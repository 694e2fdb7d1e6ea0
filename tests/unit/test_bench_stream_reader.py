"""Benchmark 2's stream reader (benchmarks/live.py `StreamReader`): it reads the live stream
off the wire as the page would, whatever the packets' boundaries, with the heartbeat taken on a
short path; what the server sends is built here by the server's own encoders."""

from __future__ import annotations

import asyncio
import itertools
import json

from hypothesis import given
from hypothesis import strategies as st
from litestar.response import ServerSentEventMessage

from benchmarks.deliveries import BASE
from benchmarks.live import PING, PING_CHUNK, Stream, StreamReader
from benchmarks.stack import User
from entrypoints.service.http.routes.live import _PING_BYTES

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n"
)
ADA = User("ada", "a-token", "c1", "w1", "k1", f"{BASE}/users/U1", "s1")


class Wire(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += bytes(data)

    def close(self) -> None:
        self.closed = True


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def event(name: str, data: object, id_: str | None = None) -> bytes:
    return chunk(ServerSentEventMessage(event=name, data=json.dumps(data), id=id_).encode())


def meetings(*names: str) -> dict[str, object]:
    return {"meetings": [{"event_uri": f"{BASE}/scheduled_events/{n}"} for n in names]}


def connected() -> tuple[StreamReader, Wire]:
    reader, wire = StreamReader(Stream(ADA), b"GET /api/live HTTP/1.1\r\n\r\n"), Wire()
    reader.connection_made(wire)
    return reader, wire


# One message across two chunks: HTTP gives chunk boundaries no meaning.
SPLIT = ServerSentEventMessage(event="meetings", data=json.dumps(meetings("ada-3"))).encode()
RESPONSE = (
    HEAD
    + event("ready", {"cursor": 0, "heartbeat": 30})
    + event("connection", {"connection": None})
    + PING_CHUNK
    + event("meetings", meetings("ada-1", "ada-2"), "7")
    + chunk(
        _PING_BYTES
        + ServerSentEventMessage(event="meetings", data=json.dumps(meetings("bob-1"))).encode()
    )
    + chunk(SPLIT[:20])
    + chunk(SPLIT[20:])
)


def test_the_heartbeat_is_the_servers() -> None:
    assert PING == _PING_BYTES


@given(st.lists(st.integers(min_value=0, max_value=len(RESPONSE)), max_size=12))
def test_the_stream_is_read_whatever_the_packets(cuts: list[int]) -> None:
    reader, wire = connected()
    assert wire.sent.startswith(b"GET /api/live")
    bounds = [0, *sorted(cuts), len(RESPONSE)]
    for start, end in itertools.pairwise(bounds):
        if end > start:
            reader.data_received(RESPONSE[start:end])
    stream = reader.stream
    assert stream.ready.is_set()
    assert sorted(stream.seen) == [
        f"{BASE}/scheduled_events/{n}" for n in ("ada-1", "ada-2", "ada-3", "bob-1")
    ]
    assert stream.foreign == [f"{BASE}/scheduled_events/bob-1"]
    assert reader.beats == 2
    assert stream.errors == []
    assert not wire.closed


def test_a_refusal_is_an_error_and_ends_the_wait_for_ready() -> None:
    reader, wire = connected()
    reader.data_received(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
    assert reader.stream.errors == ["status 401"]
    assert reader.stream.ready.is_set()
    assert wire.closed


def test_the_server_ending_or_dropping_the_stream_is_an_error() -> None:
    ended, _ = connected()
    ended.data_received(HEAD + event("ready", {"cursor": 0}) + b"0\r\n\r\n")
    assert ended.stream.errors == ["the server ended the stream"]
    dropped, _ = connected()
    dropped.data_received(HEAD + event("ready", {"cursor": 0}))
    dropped.connection_lost(None)
    assert dropped.stream.errors == ["the connection was lost (None)"]


def test_closing_it_ourselves_is_no_error() -> None:
    reader, wire = connected()
    reader.data_received(HEAD + event("ready", {"cursor": 0}))
    reader.close()
    reader.connection_lost(None)
    assert wire.closed
    assert reader.stream.errors == []


def test_a_body_that_is_not_chunked_is_refused() -> None:
    reader, _ = connected()
    reader.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
    assert reader.stream.errors == ["the response is not chunked"]
