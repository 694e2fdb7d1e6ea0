"""`serve` when a resource fails to start after the pool opened (a listener that cannot
connect, a task that cannot begin): what did start is stopped again, the pool's connections
closed, and the resource's own error is the one raised."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.postgres.listener import PostgresChangeListener
from adapters.postgres.pool import make_pool
from entrypoints import container
from entrypoints.service import server
from entrypoints.settings import load_settings
from tests.support.service import service_environment


class ListenerThatCannotStart(PostgresChangeListener):
    async def start(self) -> None:
        raise RuntimeError("the listener could not start")


async def test_a_resource_failing_after_the_pool_opened_leaves_no_pool_open(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pools: list[Any] = []

    def recorded(*args: Any, **kwargs: Any) -> Any:
        pool = make_pool(*args, **kwargs)
        pools.append(pool)
        return pool

    monkeypatch.setattr(container, "make_pool", recorded)
    monkeypatch.setattr(container, "PostgresChangeListener", ListenerThatCannotStart)
    settings = load_settings(service_environment(database_url, "http://127.0.0.1:9", 8000))

    with pytest.raises(RuntimeError, match="listener could not start"):
        await server.serve(settings)
    # Checked on the loop serve ran on, as an app that embeds it would go on: not left to the
    # end of the loop, where asyncio would close the pool's generator anyway.
    assert len(pools) == 1
    assert pools[0].closed
