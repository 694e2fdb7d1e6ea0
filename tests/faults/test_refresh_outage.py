"""Row 33: Postgres dies right after Calendly rotated a connection's refresh token.

Calendly's refresh tokens are single-use: the pair it just issued is the only way back in. The
service runs for real against this module's own Postgres, and reaches the sandbox through a
small HTTP relay that stops Postgres (`pg_ctl stop -m immediate`) the moment the token
endpoint has answered a refresh, before the service can commit the new pair.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import psycopg
from aiohttp import web

from tests.faults.conftest import StoppablePostgres, eventually
from tests.support.journeys import connect
from tests.support.sandbox import SandboxDriver
from tests.support.service import running_service

HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection"}


@asynccontextmanager
async def relay(upstream: str, after_refresh: Callable[[], None]) -> AsyncIterator[str]:
    """Forward everything to `upstream`; run `after_refresh` once a refresh was answered 200."""
    async with aiohttp.ClientSession() as client:

        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
            async with client.request(
                request.method,
                f"{upstream}{request.rel_url}",
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as answer:
                content = await answer.read()
                status = answer.status
                kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            if request.path == "/oauth/token" and b"refresh_token" in body and status == 200:
                await asyncio.to_thread(after_refresh)
            return web.Response(status=status, body=content, headers=kept)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


def refresh_token_enc(database_url: str) -> bytes:
    """The sealed refresh token as stored (read as the owner, whom RLS spares)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT refresh_token_enc FROM calendar_connections").fetchone()
    assert row is not None
    return bytes(row[0])


def expire_tokens(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE calendar_connections SET token_expires_at = now() - interval '1 h'")


async def test_a_grant_issued_just_before_postgres_dies_is_stored_once_it_is_back(
    own_postgres: StoppablePostgres,
    own_database_url: str,
    sandbox: SandboxDriver,
    http: aiohttp.ClientSession,
) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    armed = False

    def stop_postgres() -> None:
        nonlocal armed
        if armed:
            armed = False
            own_postgres.stop_immediately()
            loop.call_soon_threadsafe(stopped.set)

    async with (
        relay(sandbox.url, stop_postgres) as calendly,
        running_service(
            own_database_url,
            sandbox.url,
            CALENDLY_AUTH_BASE_URL=calendly,
            CALENDLY_API_BASE_URL=calendly,
        ) as service,
    ):
        await connect(http, service, "alice", "ada@example.com")
        await sandbox.control("DELETE", "/_sandbox/calls", expect=204)
        expire_tokens(own_database_url)
        spent = refresh_token_enc(own_database_url)
        armed = True

        async def reconnect() -> tuple[int, dict[str, Any]]:
            async with http.post(
                f"{service.url}/api/calendly/reconnect", headers=service.auth("alice")
            ) as response:
                return response.status, await response.json(content_type=None)

        during = asyncio.create_task(reconnect())
        await asyncio.wait_for(stopped.wait(), 30)
        await asyncio.sleep(1.0)  # down for a while: the commit has failed by now
        await asyncio.to_thread(own_postgres.start)
        status, body = await asyncio.wait_for(during, 60)
        assert status in (200, 503), body  # 503 if the store took longer than it waits

        async def stored() -> bool:  # a sync point; the reconnect below is the proof
            return await asyncio.to_thread(refresh_token_enc, own_database_url) != spent

        await eventually(stored, within=30, what="the kept grant to be stored")

        # The stored refresh token is the live one: the next refresh is accepted.
        expire_tokens(own_database_url)
        status, body = await reconnect()
        assert status == 200, body
        assert body["outcome"] == "reconnected", body
        assert body["connection"]["status"] == "active", body
    refreshes = await sandbox.calls("POST /oauth/token")
    assert [c["status"] for c in refreshes] == [200, 200], refreshes
