"""Fixtures shared by every test: a live Calendly sandbox on an ephemeral loopback port."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import aiohttp
import pytest

from calendly_sandbox import OAuthClient, SandboxConfig, Settings, serve
from tests.support.sandbox import REDIRECT_URI, SandboxDriver, WebhookReceiver, webhook_receiver


@pytest.fixture
def oauth_client() -> OAuthClient:
    return OAuthClient(
        client_id="test-client",
        client_secret=secrets.token_urlsafe(24),
        redirect_uris=[REDIRECT_URI],
        webhook_signing_key=secrets.token_urlsafe(24),
    )


@pytest.fixture
def sandbox_settings() -> Settings:
    """Calendly's rules, with webhook retries compressed so a day of retries takes ~0.2 s."""
    return Settings(retry_base=60.0, retry_window=86_400.0, delivery_time_scale=1e-5)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def sandbox(
    oauth_client: OAuthClient, sandbox_settings: Settings, http: aiohttp.ClientSession
) -> AsyncIterator[SandboxDriver]:
    config = SandboxConfig(clients=[oauth_client], settings=sandbox_settings)
    async with serve(config) as running:
        yield SandboxDriver(http=http, url=running.url, client=oauth_client)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with webhook_receiver() as r:
        yield r
