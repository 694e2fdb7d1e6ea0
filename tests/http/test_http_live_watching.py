"""GET /api/live tells the process's hub who watches a free-plan connection (DR-42): the users
whose connection the worker polls are marked while a stream is open, paid users never, and the
last stream to close ends it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from domain.model import WebhookStatus
from entrypoints.live import LiveHub
from entrypoints.service.http.app import create_app
from tests.support.core import build_core
from tests.support.http_app import (
    BASE_URL,
    Api,
    Readiness,
    live_scope,
    make_config,
    make_token,
    services_of,
)


class Stream:
    """GET /api/live over ASGI, as a browser tab that stays until `close()`."""

    def __init__(self, app: Litestar, user_id: str) -> None:
        self.body = bytearray()
        self._leave = asyncio.Event()
        self._task = asyncio.create_task(self._run(app, make_token(user_id)))

    async def _run(self, app: Litestar, token: str) -> None:
        async def receive() -> dict[str, Any]:
            await self._leave.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            if message["type"] == "http.response.body":
                self.body.extend(message.get("body", b""))

        scope = live_scope(token)
        await app(scope, receive, send)  # type: ignore[arg-type]

    async def connected(self) -> None:
        """Until the stream has sent its `connection` event (the hub has been told)."""
        for _ in range(200):
            if b"event: connection" in self.body:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no connection event: {bytes(self.body)!r}")

    async def close(self) -> None:
        self._leave.set()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
async def watched() -> AsyncIterator[tuple[Api, LiveHub]]:
    """The app over the fakes, and its hub."""
    core = build_core()
    services = services_of(core, Readiness())
    app = create_app(services, make_config())
    async with AsyncTestClient(app=app, base_url=BASE_URL) as client:
        yield (
            Api(core=core, client=client, readiness=Readiness(), config=make_config()),
            services.live_hub,
        )


async def test_a_free_plan_user_watching_is_polled_until_the_last_stream_closes(
    watched: tuple[Api, LiveHub],
) -> None:
    api, hub = watched
    await api.connect("fred", paid=False)
    assert api.connection("fred").webhook_status is WebhookStatus.UNAVAILABLE_PLAN
    assert hub.polled_users() == frozenset()

    first, second = Stream(api.client.app, "fred"), Stream(api.client.app, "fred")
    await first.connected()
    await second.connected()
    assert hub.polled_users() == {"fred"}
    assert hub.take_newly_polled() == {"fred"}  # the marker is woken to ask at once
    await first.close()
    assert hub.polled_users() == {"fred"}  # another tab still watches
    await second.close()
    assert hub.polled_users() == frozenset()
    assert hub.open_streams == 0


async def test_a_paid_user_watching_is_never_polled(watched: tuple[Api, LiveHub]) -> None:
    api, hub = watched
    await api.connect("ada", paid=True)
    await api.connect("fred", paid=False)
    ada, fred = Stream(api.client.app, "ada"), Stream(api.client.app, "fred")
    await ada.connected()
    await fred.connected()
    assert hub.polled_users() == {"fred"}
    await ada.close()
    await fred.close()


async def test_a_user_without_a_connection_is_not_polled(watched: tuple[Api, LiveHub]) -> None:
    api, hub = watched
    stream = Stream(api.client.app, "nobody")
    await stream.connected()
    assert hub.polled_users() == frozenset()
    assert hub.open_streams == 1
    await stream.close()


async def test_opening_the_page_on_an_active_connection_asks_for_a_grant_check(
    watched: tuple[Api, LiveHub],
) -> None:
    api, hub = watched
    await api.connect("ada", paid=True)
    await api.connect("fred", paid=False)
    streams = [Stream(api.client.app, user) for user in ("ada", "fred", "nobody")]
    for stream in streams:
        await stream.connected()
    assert hub.take_opened() == {"ada", "fred"}  # paid or not; no connection, nothing to check
    for stream in streams:
        await stream.close()
