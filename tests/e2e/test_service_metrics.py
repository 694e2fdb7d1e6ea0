"""`/metrics` over several real `serve` processes (DR-39): each answers with the totals of all
the processes sharing PROMETHEUS_MULTIPROC_DIR, and one that stops leaves its counts behind
but not its live gauges."""

from __future__ import annotations

import os
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from entrypoints.developer.launcher import listening_socket
from tests.support.deliveries import sign
from tests.support.sandbox import SandboxDriver
from tests.support.serve_process import INHERITED, serve_process, stop
from tests.support.service import service_environment

pytestmark = pytest.mark.slow

TOKEN = "e2e-metrics-token-0123456789abcdefghijkl"
REJECTED = ("calendly_connect_webhook_deliveries_total", (("outcome", "rejected_signature"),))


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[tuple[object, ...], float]:
    async with http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200, await r.text()
        text = await r.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def forge(http: aiohttp.ClientSession, url: str, count: int) -> None:
    """Deliveries signed with the wrong key on the shared URL: 401, no database trip."""
    for n in range(count):
        body = b'{"event":"invitee.created","n":%d}' % n
        headers = {
            "Content-Type": "application/json",
            "Calendly-Webhook-Signature": sign(body, "not-the-key", int(time.time())),
        }
        async with http.post(f"{url}/webhooks/calendly", data=body, headers=headers) as r:
            assert r.status == 401


async def test_every_process_answers_with_the_totals_of_all(
    sandbox: SandboxDriver, database_url: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()  # the launcher's part: an empty directory before the processes start
    sockets = [listening_socket(), listening_socket()]
    urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    config = service_environment(
        database_url,
        sandbox.url,
        sockets[0].getsockname()[1],
        METRICS_ENABLED="true",
        METRICS_TOKEN=TOKEN,
        PROMETHEUS_MULTIPROC_DIR=str(directory),
    )
    environ = {**{k: os.environ[k] for k in INHERITED if k in os.environ}, **config}
    try:
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(
                serve_process(environ, urls[0], sockets[0].fileno(), tmp_path / "a.log")
            )
            b = await stack.enter_async_context(
                serve_process(environ, urls[1], sockets[1].fileno(), tmp_path / "b.log")
            )
            await forge(http, urls[0], 3)
            await forge(http, urls[1], 5)

            from_a, from_b = await scrape(http, urls[0]), await scrape(http, urls[1])

            assert from_a[REJECTED] == from_b[REJECTED] == 8
            count = ("calendly_connect_webhook_ingest_seconds_count", ())
            assert from_a[count] == from_b[count] == 8
            # The database's gauges, read at scrape time by the real query.
            assert from_a[("calendly_connect_database_readings_up", ())] == 1
            assert ("calendly_connect_worker_lag_seconds", ()) in from_a
            pids = {p.name.rsplit("_", 1)[-1] for p in directory.glob("*.db")}
            assert {f"{a.pid}.db", f"{b.pid}.db"} <= pids

            # B stops: its counts stay in the totals, its live gauges leave them.
            await stop(b)
            after = await scrape(http, urls[0])
            assert after[REJECTED] == 8
            assert not list(directory.glob(f"gauge_live*_{b.pid}.db"))
            assert list(directory.glob(f"gauge_live*_{a.pid}.db"))
    finally:
        for sock in sockets:
            sock.close()
