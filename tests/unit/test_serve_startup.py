"""`serve` when the database accepts connections but never answers (a hung server, a
firewall that swallows packets): start-up gives up after its wait and says so in one line
("cannot start: ..."), not as an uncaught PoolTimeout with a traceback."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
import structlog

from domain.errors import StorageUnavailable
from entrypoints import container
from entrypoints.service import server
from entrypoints.settings import load_settings
from tests.support.environment import minimal_env


@pytest.fixture
def silent_database() -> Iterator[str]:
    """A URL whose server accepts every connection and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    port = listener.getsockname()[1]
    try:
        yield f"postgresql://owner:pw@127.0.0.1:{port}/calendly?connect_timeout=60"
    finally:
        listener.close()
        for conn in held:
            conn.close()


def test_a_database_that_never_answers_is_one_clear_start_up_error(
    monkeypatch: pytest.MonkeyPatch, silent_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The pool's error is the one thing said: the resources that depend on the pool had not
    begun to wait for it, so none of their waits is cancelled with a traceback of its own."""
    monkeypatch.setattr(container, "POOL_OPEN_SECONDS", 1.0)
    settings = load_settings(minimal_env(DATABASE_URL=silent_database))
    with (
        caplog.at_level("ERROR", logger="asyncio"),
        structlog.testing.capture_logs() as logs,
        pytest.raises(StorageUnavailable, match="did not answer within 1 s"),
    ):
        asyncio.run(server.serve(settings))
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    # Nor does stopping what started after the failed build trip over the pool again.
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []
