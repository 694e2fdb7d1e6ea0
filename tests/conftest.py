"""Fixtures shared by every test: a live Calendly sandbox on an ephemeral loopback port."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from calendly_sandbox import OAuthClient, SandboxConfig, Settings, serve
from tests.support.postgres import PgCluster, start_cluster, stop_cluster
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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The test Postgres: embedded unless TEST_DATABASE_URL names one; migrated once.

    Its data lives outside pytest's temporary tree: as root, pgserver runs Postgres as its
    own user, and another pytest session starting meanwhile resets that tree to mode 0700.
    """
    workdir = Path(tempfile.mkdtemp(prefix="calendly-test-pg-"))
    cluster = start_cluster(workdir / "data")
    try:
        cluster.create_template()
        yield cluster
    finally:
        try:
            if cluster.template and cluster.server is None:
                # A server of the user's own (TEST_DATABASE_URL): leave nothing of this session.
                cluster.drop(cluster.template)
        finally:
            stop_cluster(cluster)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def database_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, migrated database for this test only (as the migrating, owning user)."""
    name = pg_cluster.new_database()
    try:
        yield pg_cluster.url_for(name)
    finally:
        pg_cluster.drop(name)
