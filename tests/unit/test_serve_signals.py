"""`serve` keeps SIGINT and SIGTERM caught after serving ends, until its own stop is done
(entrypoints/service/server.py `_Server`): a second signal while it stores the grants it kept
(DR-23) is logged, not obeyed; the previous handlers come back only at the very end."""

from __future__ import annotations

import signal

import structlog
import uvicorn

from entrypoints.live import LiveHub
from entrypoints.service.server import _note_stops, _restore, _Server


def test_a_signal_after_serving_is_logged_and_the_handlers_come_back_at_the_end() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    server = _Server(uvicorn.Config(app="unused:app"), LiveHub())
    with server.capture_signals():
        pass  # serving
    # Serving is over: the handler is still ours, and uvicorn would raise nothing again.
    assert signal.getsignal(signal.SIGTERM) == server._stop_signal
    server._served = True
    with structlog.testing.capture_logs() as logs:
        signal.raise_signal(signal.SIGTERM)  # the default action would end this process
    assert [e["event"] for e in logs] == ["service.stopping"]
    server.restore_signals()
    assert signal.getsignal(signal.SIGTERM) == previous


def test_a_signal_while_serving_stops_serving() -> None:
    server = _Server(uvicorn.Config(app="unused:app"), LiveHub())
    with server.capture_signals():
        try:
            signal.raise_signal(signal.SIGTERM)
            assert server.should_exit
        finally:
            server.restore_signals()


def test_a_signal_while_starting_is_noted_and_a_second_one_is_logged() -> None:
    """Between building the services and uvicorn taking the signals over, a stop is noted
    (serve then skips serving) instead of cancelling start-up midway (uvicorn's lifespan
    logged that as a traceback); a second one cannot cut the stop short; the handlers it
    replaced come back."""
    previous = signal.getsignal(signal.SIGINT)
    stops: list[int] = []
    replaced = _note_stops(stops)
    try:
        signal.raise_signal(signal.SIGINT)
        assert stops == [signal.SIGINT]
        with structlog.testing.capture_logs() as logs:
            signal.raise_signal(signal.SIGTERM)  # an impatient second one
        assert stops == [signal.SIGINT]
        assert [e["event"] for e in logs] == ["service.stopping"]
    finally:
        _restore(replaced)
    assert signal.getsignal(signal.SIGINT) == previous
