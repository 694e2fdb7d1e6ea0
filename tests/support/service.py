"""Run the real service (container, Postgres, uvicorn) in-process on a loopback port."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import jwt

from entrypoints.developer import launcher
from entrypoints.service.server import serve
from entrypoints.settings import Settings, load_settings

JWT_SECRET = secrets.token_urlsafe(40)


@dataclass
class RunningService:
    url: str
    settings: Settings
    client_id: str
    client_secret: str
    signing_key: str

    def token_for(self, user_id: str, *, ttl: int = 3600) -> str:
        now = int(time.time())
        claims = {"sub": user_id, "aud": "authenticated", "iat": now, "exp": now + ttl}
        return jwt.encode(claims, self.settings.http.jwt_secrets[0].reveal(), algorithm="HS256")

    def auth(self, user_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token_for(user_id)}"}


def service_environment(
    database_url: str, sandbox_url: str, port: int, **overrides: str
) -> dict[str, str]:
    """The configuration `calendly-connect serve` gets in tests, as environment variables.

    A fresh OAuth client (`svc-<port>`), webhook signing key and token encryption key each
    call; several processes given the same dict act as one deployment. Register the client in
    the sandbox with `register_client` before connecting anyone.
    """
    environ = launcher.service_environment(
        database_url=database_url,
        public_url=f"http://127.0.0.1:{port}",
        client_id=f"svc-{port}",
        sandbox_url=sandbox_url,
        made={**launcher.new_secrets(), "JWT_SECRET": JWT_SECRET},
        PORT=str(port),
        LOG_FORMAT="json",
    )
    return {**environ, **overrides}


async def register_client(
    http: aiohttp.ClientSession, sandbox_url: str, environ: dict[str, str]
) -> RunningService:
    """Register the OAuth client of `environ` in the sandbox; what a test needs to drive it."""
    settings = load_settings(environ)
    async with http.post(
        f"{sandbox_url}/_sandbox/clients",
        json={
            "client_id": environ["CALENDLY_OAUTH_CLIENT_ID"],
            "client_secret": environ["CALENDLY_OAUTH_CLIENT_SECRET"],
            "redirect_uris": [settings.calendly.oauth_redirect_uri],
            "webhook_signing_key": environ["CALENDLY_WEBHOOK_SIGNING_KEY"],
        },
    ) as response:
        assert response.status == 201, await response.text()
    return RunningService(
        url=settings.http.public_base_url,
        settings=settings,
        client_id=environ["CALENDLY_OAUTH_CLIENT_ID"],
        client_secret=environ["CALENDLY_OAUTH_CLIENT_SECRET"],
        signing_key=environ["CALENDLY_WEBHOOK_SIGNING_KEY"],
    )


@asynccontextmanager
async def running_service(
    database_url: str, sandbox_url: str, **overrides: str
) -> AsyncIterator[RunningService]:
    """The service as `calendly-connect serve` runs it, pointed at the sandbox.

    Registers its own OAuth client in the sandbox (the redirect URI needs the port).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    environ = service_environment(database_url, sandbox_url, port, **overrides)
    async with aiohttp.ClientSession() as http:
        running = await register_client(http, sandbox_url, environ)
        settings, public = running.settings, f"http://127.0.0.1:{port}"
        running.url = public
        stop = asyncio.Event()
        task = asyncio.create_task(serve(settings, sockets=[sock], stop=stop))
        deadline = time.monotonic() + 30
        while True:
            if task.done():
                task.result()  # raises what stopped the service
            try:
                async with http.get(f"{public}/health/ready") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "the service did not become ready"
            await asyncio.sleep(0.05)
        try:
            yield running
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            sock.close()
