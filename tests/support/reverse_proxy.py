"""A small HTTP reverse proxy on loopback, as a host app puts in front of the service.

Routes by path prefix to upstream base URLs, longest prefix first. A route either strips its
prefix (`/calendly/api/x` reaches the upstream as `/api/x`, as nginx's `proxy_pass http://u/;`
does) or keeps it. Bodies stream both ways, so Server-Sent Events pass through as they come.
Runs its own event loop in a thread, so synchronous tests (Playwright's sync API) can use it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass

import aiohttp
from aiohttp import web

# Hop-by-hop headers (RFC 9110, 7.6.1) and those the proxy sets itself.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


@dataclass(frozen=True)
class Route:
    prefix: str  # "" or "/calendly"
    upstream: str  # "http://127.0.0.1:8000"
    strip: bool = True


class ReverseProxy:
    def __init__(self, routes: list[Route] | None = None) -> None:
        self.routes = sorted(routes or [], key=lambda r: len(r.prefix), reverse=True)
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        # "METHOD /path" of every request forwarded, in order (a list: appends are atomic).
        self.seen: list[str] = []

    def set_routes(self, routes: list[Route]) -> None:
        """Routes may be set once the upstreams are known (after the proxy's port was)."""
        self.routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)

    def start(self) -> ReverseProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, connect=5)
        )
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _route(self, path: str) -> Route | None:
        for route in self.routes:
            if not route.prefix or path == route.prefix or path.startswith(route.prefix + "/"):
                return route
        return None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        route = self._route(request.path)
        if route is None:
            return web.Response(status=404, text="no route in the test proxy")
        self.seen.append(f"{request.method} {request.path}")
        path = request.raw_path
        if route.strip and route.prefix:
            path = path[len(route.prefix) :] or "/"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        headers["X-Forwarded-Host"] = request.host
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Prefix"] = route.prefix
        assert self._session is not None
        async with self._session.request(
            request.method,
            route.upstream + path,
            headers=headers,
            data=await request.read() if request.can_read_body else None,
            allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _NOT_FORWARDED:
                    response.headers.add(name, value)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (ConnectionResetError, aiohttp.ClientError):
                pass  # either side went away: nothing more to pass on
            await response.write_eof()
            return response
