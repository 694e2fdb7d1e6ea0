"""`serve` keeps SIGINT and SIGTERM caught after serving ends, until its own stop is done
(entrypoints/service/server.py `_Server`): a second signal while it stores the grants it kept
(DR-23) is logged, not obeyed; the previous handlers come back only at the very end."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import NoReturn

import pytest
import structlog
import uvicorn

from entrypoints.live import LiveHub
from entrypoints.service import server
from entrypoints.service.server import _note_stops, _restore, _Server
from entrypoints.settings import load_settings
from tests.support.environment import minimal_env


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


def _serve_stopped_while_built(
    monkeypatch: pytest.MonkeyPatch, build: Callable[[], Awaitable[None]]
) -> list[tuple[str, str | None]]:
    """`serve` with `build` as the services' build, asserting it never serves; its log."""

    async def build_services(container: object) -> object:
        await build()
        return object()

    def no_server(*args: object) -> NoReturn:
        raise AssertionError("served after a stop")

    monkeypatch.setattr(server, "build_services", build_services)
    monkeypatch.setattr(server, "_server", no_server)
    with structlog.testing.capture_logs() as logs:
        asyncio.run(server.serve(load_settings(minimal_env())))
    return [(e["event"], e.get("detail")) for e in logs]


def test_a_signal_late_in_the_build_stops_the_process_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C after the build's last wait, before `serve` goes on: it must not stay pending
    into uvicorn's start-up (whose lifespan logged it as a traceback). `serve` ends cleanly,
    never serves, and puts the handlers back."""
    built: list[str] = []
    previous = signal.getsignal(signal.SIGINT)

    async def build() -> None:
        await asyncio.sleep(0)  # the build's waits are over
        signal.raise_signal(signal.SIGINT)  # its last synchronous stretch
        built.append("done")

    logs = _serve_stopped_while_built(monkeypatch, build)
    assert built == ["done"]
    assert logs[-2:] == [
        ("service.stopping", "asked to stop while starting"),
        ("service.stopped", None),
    ]
    assert signal.getsignal(signal.SIGINT) == previous


def test_a_signal_while_the_build_waits_lets_it_finish_then_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SIGTERM from outside while the build waits (as a real one comes, the loop asleep in
    select()): the build is not cancelled midway (resources that others wait on would each
    log a traceback); it finishes, nothing is served, and the handlers come back."""
    previous = signal.getsignal(signal.SIGTERM)
    built: list[str] = []

    async def build() -> None:
        # Otherwise SIGTERM's default action would end the test run itself.
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
        await asyncio.sleep(0.5)
        built.append("done")

    logs = _serve_stopped_while_built(monkeypatch, build)
    assert built == ["done"]
    assert ("service.stopping", "asked to stop while starting") in logs
    assert signal.getsignal(signal.SIGTERM) == previous


def test_a_second_signal_while_the_build_runs_goes_to_the_handler_before() -> None:
    """While the services are still being built there is no stop to finish: a second Ctrl-C
    is not swallowed but handed to the handler that was there before (here Python's own,
    which raises KeyboardInterrupt): twice ends a start-up stuck on its database at once."""
    stops: list[int] = []
    building = True
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    replaced = _note_stops(stops, finishing=lambda: not building)
    try:
        signal.raise_signal(signal.SIGINT)
        assert stops == [signal.SIGINT]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
    finally:
        _restore(replaced)
        signal.signal(signal.SIGINT, before)


def test_a_forced_exit_still_runs_the_apps_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    """Ctrl-C twice while serving is uvicorn's forced exit, which skips the app's shutdown:
    the lifespan was left waiting and cancelled as the loop closed (a traceback in the log,
    and the metrics' live gauges never taken out). The app's shutdown runs all the same."""
    events: list[str] = []
    started = asyncio.Event()

    async def app(
        scope: dict[str, object],
        receive: Callable[[], Awaitable[dict[str, str]]],
        send: Callable[[dict[str, str]], Awaitable[None]],
    ) -> None:
        assert scope["type"] == "lifespan"
        events.append((await receive())["type"])
        await send({"type": "lifespan.startup.complete"})
        started.set()
        try:
            events.append((await receive())["type"])
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        await send({"type": "lifespan.shutdown.complete"})

    async def serve_and_press_ctrl_c_twice() -> None:
        sock = socket.create_server(("127.0.0.1", 0))
        config = uvicorn.Config(app, lifespan="on", log_config=None)
        served = _Server(config, LiveHub())

        async def twice() -> None:
            await started.wait()
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

        pressing = asyncio.create_task(twice())
        try:
            await served.serve(sockets=[sock])
        finally:
            served.restore_signals()
            sock.close()
        await pressing
        assert served.force_exit

    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        asyncio.run(serve_and_press_ctrl_c_twice())
    assert events == ["lifespan.startup", "lifespan.shutdown"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
