"""Run the HTTP service: resources up, Litestar app on uvicorn, resources down."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any, Final

import psycopg
import psycopg_pool
import uvicorn

from entrypoints.container import (
    Container,
    build_services,
    drain_kept_grants,
    resolve,
)
from entrypoints.http.app import create_app
from entrypoints.http.config import HttpConfig
from entrypoints.settings import Settings

# How uvicorn runs the app (the benchmarks' bare reference endpoint runs under the same).
UVICORN_OPTIONS: Final[dict[str, Any]] = {
    "log_config": None,  # our structlog set-up handles uvicorn's records
    "access_log": False,  # the app logs one line per request itself
    "server_header": False,
    "lifespan": "on",
    # The C parser (httptools) rather than the pure-Python h11: part of DR-18.
    "http": "httptools",
    # Open event streams would otherwise hold a stop for as long as pages stay open;
    # pages reconnect to a sibling process and resume from their last event id.
    "timeout_graceful_shutdown": 3,
}


def run_server(main: Coroutine[Any, Any, None]) -> None:
    """Run the server's coroutine on uvloop where it exists, else on asyncio's own loop.

    With httptools, uvloop takes about a fifth off the CPU time of a webhook delivery
    (ARCHITECTURE.md, DR-18); everything else is unchanged.
    """
    try:
        import uvloop
    except ImportError:  # a platform uvloop does not support (Windows)
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def http_config(settings: Settings) -> HttpConfig:
    return HttpConfig(
        jwt_secret=settings.jwt_secret,
        jwt_audience=settings.jwt_audience,
        jwt_issuer=settings.jwt_issuer,
        dev_login_enabled=settings.dev_login_enabled,
        app_origins=settings.app_origins,
        public_base_url=settings.public_base_url,
        secure_cookies=settings.public_base_url.startswith("https://"),
        infrastructure_errors=(psycopg.OperationalError, psycopg_pool.PoolTimeout),
    )


async def serve(
    settings: Settings,
    *,
    sockets: list[socket.socket] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM or until `stop` is set; tests pass bound `sockets`."""
    container = Container(settings=settings)
    services = await build_services(container)
    try:
        app = create_app(services, http_config(settings))
        config = uvicorn.Config(app, host=settings.host, port=settings.port, **UVICORN_OPTIONS)
        server = uvicorn.Server(config)
        watcher = asyncio.create_task(_stop_when(stop, server)) if stop is not None else None
        try:
            await server.serve(sockets=sockets)
        finally:
            if watcher is not None:
                watcher.cancel()
    finally:
        await drain_kept_grants(container)
        await resolve(container.shutdown_resources())


async def _stop_when(stop: asyncio.Event, server: uvicorn.Server) -> None:
    await stop.wait()
    server.should_exit = True
