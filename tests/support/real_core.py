"""The use cases on real adapters (Postgres, the Calendly sandbox over HTTP), and their workers.

Shared by the Postgres suites in tests/integration/; its conftest.py turns `real_core` and
`two_workers` into the `real` and `workers` fixtures.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import psycopg
import psycopg_pool

from adapters.calendly import AiohttpCalendlyApi
from adapters.crypto import AesGcmTokenCipher
from adapters.postgres.unit_of_work import unit_of_work_factory
from adapters.system import SecretsRandomness, SystemClock
from domain.secret import Secret
from domain.usecases.complete_connect import CompleteConnect, CompleteConnectCommand
from domain.usecases.disconnect import Disconnect
from domain.usecases.ensure_subscription import EnsureSubscription
from domain.usecases.reconnect import Reconnect
from domain.usecases.refresh_access_token import RefreshAccessToken
from domain.usecases.start_connect import StartConnect, StartConnectCommand
from entrypoints.container import Container, resolve
from entrypoints.service.worker import Worker, build_worker
from entrypoints.settings import Settings, load_settings
from tests.support.sandbox import SandboxDriver, query_of

CALLBACK_BASE = "http://127.0.0.1:9/webhooks/calendly"


@dataclass
class RealCore:
    sandbox: SandboxDriver
    uow: object
    key: bytes
    database_url: str
    start: StartConnect
    complete: CompleteConnect
    reconnect: Reconnect
    disconnect: Disconnect
    tokens: RefreshAccessToken

    async def connect(self, user_id: str, email: str) -> CompleteConnectCommand:
        started = await self.start(StartConnectCommand(user_id=user_id))
        params = query_of(started.authorization_url)
        response = await self.sandbox.authorize(
            state=params["state"],
            code_challenge=params["code_challenge"],
            code_challenge_method="S256",
            sandbox_login=email,
        )
        code = query_of(response.headers["Location"])["code"]
        command = CompleteConnectCommand(state=started.state, code=code, user_id=user_id)
        await self.complete(command)
        return command


@asynccontextmanager
async def real_core(
    sandbox: SandboxDriver, pool: psycopg_pool.AsyncConnectionPool[Any], database_url: str
) -> AsyncIterator[RealCore]:
    """The connect use cases on `pool` (as the runtime role) and the sandbox, a fresh key."""
    key = os.urandom(32)
    cipher = AesGcmTokenCipher({"k1": key}, "k1")
    uow = unit_of_work_factory(pool, cipher)
    clock, random = SystemClock(), SecretsRandomness()
    async with aiohttp.ClientSession() as session:
        calendly = AiohttpCalendlyApi(
            session,
            client_id=sandbox.client.client_id,
            client_secret=Secret(sandbox.client.client_secret),
            auth_base_url=sandbox.url,
            api_base_url=sandbox.url,
            retry_base_delay=0.01,
        )
        redirect = sandbox.client.redirect_uris[0]
        tokens = RefreshAccessToken(uow, calendly, clock)
        ensure = EnsureSubscription(uow, calendly, tokens, clock, random, CALLBACK_BASE)
        start = StartConnect(uow, calendly, clock, random, redirect)
        yield RealCore(
            sandbox=sandbox,
            uow=uow,
            key=key,
            database_url=database_url,
            start=start,
            complete=CompleteConnect(uow, calendly, clock, random, ensure, redirect),
            reconnect=Reconnect(uow, calendly, tokens, ensure, start, clock),
            disconnect=Disconnect(uow, calendly, tokens, clock),
            tokens=tokens,
        )


def owner_sql(core: RealCore, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(core.database_url, autocommit=True) as conn:
        cursor = conn.execute(query.encode(), params)
        return cursor.fetchall() if cursor.description else []


async def subscriptions(core: RealCore) -> list[dict[str, object]]:
    data = await core.sandbox.control("GET", "/_sandbox/subscriptions", expect=200)
    subs: list[dict[str, object]] = data["subscriptions"]
    return subs


async def user_id_of(core: RealCore, email: str) -> str:
    users = (await core.sandbox.control("GET", "/_sandbox/users", expect=200))["users"]
    return str(next(u["id"] for u in users if u["email"] == email))


async def connect_free(core: RealCore, user: str, email: str) -> None:
    """Connect `user` as a free-plan Calendly user (no webhooks: the worker polls)."""
    started = await core.start(StartConnectCommand(user_id=user))
    params = query_of(started.authorization_url)
    response = await core.sandbox.authorize(
        state=params["state"],
        code_challenge=params["code_challenge"],
        code_challenge_method="S256",
        sandbox_login=email,
        sandbox_plan="free",
    )
    code = query_of(response.headers["Location"])["code"]
    await core.complete(CompleteConnectCommand(state=started.state, code=code, user_id=user))


def settings_for(core: RealCore, **extra: str) -> Settings:
    """The service's settings for this core's database, sandbox client and encryption key."""
    return load_settings(
        {
            "DATABASE_URL": core.database_url,
            "CALENDLY_OAUTH_CLIENT_ID": core.sandbox.client.client_id,
            "CALENDLY_OAUTH_CLIENT_SECRET": core.sandbox.client.client_secret,
            "CALENDLY_WEBHOOK_SIGNING_KEY": "app-key-not-used-here",
            "CALENDLY_AUTH_BASE_URL": core.sandbox.url,
            "CALENDLY_API_BASE_URL": core.sandbox.url,
            "PUBLIC_BASE_URL": "http://127.0.0.1:9",
            "CALENDLY_WEBHOOK_CALLBACK_BASE": CALLBACK_BASE,
            "TOKEN_ENCRYPTION_KEY": "k1:" + base64.urlsafe_b64encode(core.key).decode(),
            "JWT_SECRET": "j" * 40,
            **extra,
        }
    )


@asynccontextmanager
async def two_workers(core: RealCore) -> AsyncIterator[tuple[Worker, Worker]]:
    """Two maintenance workers, each with its own container, on this core's database."""
    settings = settings_for(core)
    containers = [Container(settings=settings), Container(settings=settings)]
    try:
        first = await build_worker(containers[0], settings)
        second = await build_worker(containers[1], settings)
        yield first, second
    finally:
        for container in containers:
            await resolve(container.shutdown_resources())
