"""`calendly-connect serve`: resources up, the Litestar app on uvicorn, resources down."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final
from urllib.parse import urlsplit

import psycopg
import psycopg_pool
import structlog
import uvicorn
from litestar import Litestar

from adapters import prometheus
from adapters.postgres.roles import UnsafeDatabaseRole
from domain.errors import StorageUnavailable
from entrypoints.arguments import fail, file_descriptor, port_number
from entrypoints.container import (
    Container,
    build_services,
    drain_kept_grants,
    resolve,
)
from entrypoints.live import LiveHub
from entrypoints.logging import configure_service_logging
from entrypoints.service.event_loop import run_fast
from entrypoints.service.http.app import Lifespan, create_app
from entrypoints.service.http.config import HttpConfig
from entrypoints.service.http.context import OneIn
from entrypoints.service.http.cursors import MeetingCursors
from entrypoints.service.http.sessions import UserSessions
from entrypoints.service.protocol import OneWriteHttpToolsProtocol
from entrypoints.services import Services
from entrypoints.settings import ConfigError, Settings, load_settings
from entrypoints.tracing import Tracing, TracingUnavailable, start_tracing

# How uvicorn runs the app (the benchmarks' bare reference endpoint runs under the same).
log = structlog.get_logger(__name__)

UVICORN_OPTIONS: Final[dict[str, Any]] = {
    "log_config": None,  # our structlog set-up handles uvicorn's records
    "access_log": False,  # the app logs one line per request itself
    "server_header": False,
    "lifespan": "on",
    # The C parser (httptools) rather than the pure-Python h11: part of DR-18; each answer
    # sent in one write (protocol.py).
    "http": OneWriteHttpToolsProtocol,
    # Open event streams would otherwise hold a stop for as long as pages stay open;
    # pages reconnect to a sibling process and resume from their last event id.
    "timeout_graceful_shutdown": 3,
}


def _sandbox_url(settings: Settings) -> str | None:
    """The Calendly sandbox, when this is a local stack talking to one: dev login on and
    Calendly's API on this machine (what `make run` sets up); None anywhere else."""
    api = urlsplit(settings.calendly.api_base_url)
    local = api.hostname in ("127.0.0.1", "localhost", "::1")
    if not (settings.http.dev_login_enabled and local and not api.path.strip("/")):
        return None
    return f"{api.scheme}://{api.netloc}"


def http_config(settings: Settings) -> HttpConfig:
    http, encryption = settings.http, settings.encryption
    # User sessions are keyed by every encryption key (the active one signs): DR-30.
    ordered = [encryption.active_key, *(k for k in encryption.keys if k != encryption.active_key)]
    session_keys = tuple(
        (key_id, UserSessions.key_from_encryption_key(encryption.keys[key_id]))
        for key_id in ordered
    )
    cursor_key = None
    if not http.jwt_secrets:  # JWKS only: key the cursors from the active encryption key
        cursor_key = MeetingCursors.key_from_encryption_key(encryption.keys[encryption.active_key])
    return HttpConfig(
        jwt_secrets=http.jwt_secrets,
        jwt_jwks_urls=http.jwt_jwks_urls,
        jwt_audience=http.jwt_audience,
        jwt_issuer=http.jwt_issuer,
        jwt_leeway_seconds=http.jwt_leeway_seconds,
        jwt_user_claim=http.jwt_user_claim,
        cursor_key=cursor_key,
        session_keys=session_keys,
        dev_login_enabled=http.dev_login_enabled,
        sandbox_url=_sandbox_url(settings),
        app_origins=http.app_origins,
        public_base_url=http.public_base_url,
        root_path=http.root_path,
        secure_cookies=http.public_base_url.startswith("https://"),
        infrastructure_errors=(psycopg.OperationalError, psycopg_pool.PoolTimeout),
        metrics_token=settings.metrics.token if settings.metrics.enabled else None,
        webhook_log_sample=OneIn(settings.logging.webhook_one_in),
    )


async def serve(
    settings: Settings,
    *,
    sockets: list[socket.socket] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM or until `stop` is set; tests pass bound `sockets`."""
    tracing = start_tracing(settings.tracing)  # None unless an exporter is configured (DR-40)
    container = Container(settings=settings)
    if tracing is not None:
        container.calendly.add_kwargs(spans=tracing.calendly_spans)
    # From here until uvicorn takes the signals over, a stop is noted, and honoured once the
    # services are built: serving is skipped and they close as after serving. Left to
    # asyncio's own handler, which cancels the whole of `serve`, a stop late in the build
    # stayed pending into uvicorn's start-up (its lifespan logged a traceback), and one during
    # the build cancelled resources that others were waiting on (a traceback for each). A
    # second signal while the build still runs (the database does not answer, say) goes to
    # the handler before ours: Ctrl-C twice ends it at once, as it did.
    stops: list[int] = []
    built = False

    def note_first(_: int) -> None:
        log.warning(
            "service.stopping",
            detail="stopping once started; a second signal stops it at once",
        )

    noted = _note_stops(stops, finishing=lambda: built, first=note_first)
    try:
        services = await build_services(container)
    except BaseException as exc:
        try:
            if isinstance(exc, Exception):  # what did start stops again: the pool closes
                await _stop_what_started(container)
        finally:
            _restore(noted)
            if tracing is not None:
                tracing.shutdown()
        raise
    built = True
    server: _Server | None = None
    try:
        if stops:
            log.info("service.stopping", detail="asked to stop while starting")
        else:
            server = _server(settings, services, tracing)
            watcher = asyncio.create_task(_stop_when(stop, server)) if stop is not None else None
            try:
                await server.serve(sockets=sockets)
            finally:
                if watcher is not None:
                    watcher.cancel()
    finally:
        try:
            await drain_kept_grants(container)
            await resolve(container.shutdown_resources())
            if tracing is not None:  # the last spans go out before the process ends
                await asyncio.to_thread(tracing.shutdown)
            log.info("service.stopped")
        finally:
            if server is not None:
                server.restore_signals()
            _restore(noted)


async def _stop_what_started(container: Container) -> None:
    """After a failed build: the resources that did start are stopped (their tasks, the
    pool's connections). Their own trouble in stopping is logged; the build's error is the
    one the caller hears."""
    try:
        await resolve(container.shutdown_resources())
    except Exception as exc:
        log.warning("service.start_up_cleanup_failed", error=type(exc).__name__)


def _server(settings: Settings, services: Services, tracing: Tracing | None) -> _Server:
    """uvicorn's server over the app, and the collector set for a long-lived process."""
    metrics_dir = settings.metrics.multiproc_dir if settings.metrics.enabled else None
    app = create_app(
        services,
        http_config(settings),
        lifespan=[_metrics(metrics_dir)],
        tracer=tracing.tracer if tracing is not None else None,
    )
    config = uvicorn.Config(
        app, host=settings.http.host, port=settings.http.port, **UVICORN_OPTIONS
    )
    server = _Server(config, services.live_hub)
    # What start-up made lives as long as the process: out of the collector's sight, a
    # full collection no longer walks it (issue 17: such pauses were much of ingest's p99).
    gc.collect()
    gc.freeze()
    # Young collections 70 times rarer: with 700 (the default), a request's objects still
    # alive at a collection were promoted, and with thousands of open streams the full
    # collections that followed took 0.4-0.8 s each, 64 times in one benchmark run; with
    # 50,000 there were 2 (issue 17, DR-48).
    gc.set_threshold(50_000, 10, 10)
    return server


def _note_stops(
    stops: list[int],
    *,
    finishing: Callable[[], bool] = lambda: True,
    first: Callable[[int], object] = lambda sig: None,
) -> dict[int, Any]:
    """The first SIGINT or SIGTERM is appended to `stops` and passed to `first`; a later one
    is logged while `finishing()` (a stop under way must finish), else it goes to the handler
    it replaced, as if this one were not there. Returns the handlers replaced. Only the main
    thread may set handlers: elsewhere (tests serving in a thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    replaced: dict[int, Any] = {}

    def note(sig: int, frame: FrameType | None) -> None:
        if not stops:
            stops.append(sig)
            first(sig)
        elif not finishing():
            _restore(replaced)
            signal.raise_signal(sig)
        else:  # as after serving: the stop under way (grants kept, DR-23) must finish
            log.warning("service.stopping", detail="finishing its stop first; wait a moment")

    replaced.update({sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)})
    return replaced


def _restore(handlers: Mapping[int, Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


class _Server(uvicorn.Server):
    """uvicorn's server that first ends this process's live streams when it stops (uvicorn
    would otherwise wait for them, then cancel each one with a traceback in the log), and that
    lets `serve` finish its own stop after a signal."""

    def __init__(self, config: uvicorn.Config, live_hub: LiveHub) -> None:
        super().__init__(config)
        self._live_hub = live_hub
        self._previous: dict[int, Any] = {}
        self._served = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM end serving, and stay caught after it, while `serve` finishes its
        own stop: uvicorn would restore the previous handlers and raise the signal again, so
        SIGTERM's default action (or a second Ctrl-C) would end the process before it stores
        the grants it kept (DR-23) and closes its pool. `restore_signals` puts them back."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous.setdefault(sig, signal.signal(sig, self._stop_signal))
        yield

    def _stop_signal(self, sig: int, frame: FrameType | None) -> None:
        if not self._served:
            self.handle_exit(sig, frame)  # a second one while serving: uvicorn's force exit
        else:  # serving is over: the rest of the stop must not be cut short
            log.warning("service.stopping", detail="finishing its stop first; wait a moment")

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().serve(sockets)
        finally:
            self._served = True

    def restore_signals(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._live_hub.close()
        await super().shutdown(sockets)
        # A second Ctrl-C while uvicorn waits for connections (a forced exit) makes it skip
        # the app's shutdown: its lifespan task was then left waiting, cancelled as the loop
        # closed (a traceback in the log), and this process's live gauges stayed in the
        # metrics' sums. The app's shutdown is short (the metrics' files), so it runs anyway.
        ended = getattr(self.lifespan, "shutdown_event", None)
        if self.force_exit and not (ended is not None and ended.is_set()):
            await self.lifespan.shutdown()


def _metrics(directory: Path | None) -> Lifespan:
    """This process's part of the metrics' directory: its gauges from nothing at start, its
    live gauges out of the sums at the app's shutdown (which uvicorn runs on SIGTERM before
    it re-raises the signal, so that it runs where a `finally` here would not)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        prometheus.process_started(directory)
        try:
            yield
        finally:
            prometheus.process_stopping(directory)

    return lifespan


async def _stop_when(stop: asyncio.Event, server: uvicorn.Server) -> None:
    await stop.wait()
    server.should_exit = True


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """`calendly-connect serve`: configuration from `environ`, HOST and PORT from the flags."""
    parser = argparse.ArgumentParser(
        prog="calendly-connect serve", description="Run the HTTP service."
    )
    parser.add_argument("--host", help="override HOST")
    parser.add_argument("--port", type=port_number(), help="override PORT")
    parser.add_argument(
        "--fd",
        type=file_descriptor,
        help="serve on this inherited, listening socket (used by `dev`)",
    )
    args = parser.parse_args(argv)
    overrides = {"HOST": args.host} if args.host else {}
    if args.port is not None:
        overrides["PORT"] = str(args.port)
    try:
        settings = load_settings({**environ, **overrides})
    except ConfigError as exc:
        return fail(str(exc))
    if settings.metrics.enabled and not prometheus.multiprocess_mode():
        return fail(
            "METRICS_ENABLED=true, but prometheus_client is not in multiprocess mode: "
            "PROMETHEUS_MULTIPROC_DIR must be in the process's environment when it starts"
        )
    configure_service_logging(settings)
    sockets = None
    if args.fd is not None:
        try:
            sockets = [socket.socket(fileno=args.fd)]
        except OSError as exc:
            return fail(f"--fd {args.fd} is not an open socket: {exc}")
    try:
        run_fast(serve(settings, sockets=sockets))
    except (UnsafeDatabaseRole, TracingUnavailable) as exc:
        return fail(str(exc), 1)
    except (StorageUnavailable, OSError) as exc:
        return fail(f"cannot start: {exc}", 1)
    except KeyboardInterrupt:
        return 0
    return 0
