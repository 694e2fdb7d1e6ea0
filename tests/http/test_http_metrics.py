"""`/metrics` (DR-39): only with its token, named and labelled as documented, counting real
requests; the database's gauges read at scrape time and reused for a few seconds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from adapters.prometheus import DatabaseReadings, MetricsExporter, calendly_route
from domain.secret import Secret
from entrypoints.service.http.app import create_app
from entrypoints.service.http.config import MIB
from tests.support.core import APP_KEY, Core
from tests.support.http_app import (
    BASE_URL,
    Api,
    Readiness,
    booking,
    live_scope,
    make_config,
    make_token,
    services_of,
)

TOKEN = "metrics-token-0123456789-abcdefghijklmnop"
AUTH = {"authorization": f"Bearer {TOKEN}"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Database:
    """A steerable scrape-time reader: what it answers, how often it was asked."""

    def __init__(self) -> None:
        self.readings = DatabaseReadings(
            connections={"connected": 3, "needs_reauth": 1},
            host_webhook_backlog={"crm": 7},
            worker_lag_seconds=12.5,
        )
        self.down = False
        self.reads = 0

    async def __call__(self) -> DatabaseReadings:
        self.reads += 1
        if self.down:
            raise ConnectionRefusedError("down")
        return self.readings


@pytest.fixture
def database() -> Database:
    return Database()


@pytest.fixture
async def metered(core: Core, database: Database) -> AsyncIterator[Api]:
    exporter = MetricsExporter(database, None, cache_seconds=60.0)
    config = make_config(metrics_token=Secret(TOKEN))
    app = create_app(services_of(core, Readiness(), exporter), config)
    async with AsyncTestClient(app=app, base_url=BASE_URL) as client:
        yield Api(core=core, client=client, readiness=Readiness(), config=config)


async def scrape(api: Api) -> Samples:
    response = await api.client.get("/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_metrics_is_not_routed_unless_enabled(api: Api) -> None:
    response = await api.client.get("/metrics", headers=AUTH)

    assert response.status_code == 404


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong-token"}, {"authorization": f"Basic {TOKEN}"}],
)
async def test_metrics_needs_the_token(metered: Api, headers: dict[str, str]) -> None:
    response = await metered.client.get("/metrics", headers=headers)

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert "calendly_connect" not in response.text


async def test_webhook_deliveries_are_counted_by_outcome_and_timed(metered: Api) -> None:
    host = await metered.connect("alice")
    body = booking(host)
    before = await scrape(metered)

    assert (await metered.deliver(body, user_id="alice")).json() == {"outcome": "applied"}
    assert (await metered.deliver(body, user_id="alice")).json() == {"outcome": "duplicate"}
    forged = await metered.deliver(body, key="not-the-key", path="/webhooks/calendly")
    assert forged.status_code == 401
    wrong_type = await metered.deliver(body, user_id="alice", content_type="text/plain")
    assert wrong_type.status_code == 415
    too_large = await metered.deliver(b" " * (MIB + 1), key=APP_KEY.reveal())
    assert too_large.status_code == 413
    metered.core.db.unavailable = True
    assert (await metered.deliver(booking(host, "e2"), user_id="alice")).status_code == 503
    metered.core.db.unavailable = False
    after = await scrape(metered)

    name = "calendly_connect_webhook_deliveries_total"
    for outcome in (
        "applied",
        "duplicate",
        "rejected_signature",
        "unsupported_media_type",
        "too_large",
        "storage_unavailable",
    ):
        assert delta(before, after, name, outcome=outcome) == 1, outcome
    assert delta(before, after, name, outcome="error") == 0
    # Every delivery observed once in the histogram, in seconds.
    assert delta(before, after, "calendly_connect_webhook_ingest_seconds_count") == 6
    assert delta(before, after, "calendly_connect_webhook_ingest_seconds_bucket", le="+Inf") == 6
    assert 0 < delta(before, after, "calendly_connect_webhook_ingest_seconds_sum") < 60


async def test_no_user_id_token_or_secret_appears_in_the_metrics(metered: Api) -> None:
    host = await metered.connect("alice-the-user")
    await metered.deliver(booking(host), user_id="alice-the-user")
    connection = metered.connection("alice-the-user")

    text = (await metered.client.get("/metrics", headers=AUTH)).text

    assert "alice-the-user" not in text
    assert connection.webhook_token not in text
    assert TOKEN not in text
    assert host.uri not in text


async def test_the_database_gauges_are_read_at_scrape_time_and_reused(
    metered: Api, database: Database
) -> None:
    assert database.reads == 0  # requests never read them
    await metered.deliver(booking(await metered.connect("alice")), user_id="alice")
    assert database.reads == 0

    first = await scrape(metered)
    second = await scrape(metered)

    assert database.reads == 1  # cached for the exporter's cache_seconds
    for samples in (first, second):
        assert value(samples, "calendly_connect_database_readings_up") == 1
        assert value(samples, "calendly_connect_connections", status="connected") == 3
        assert value(samples, "calendly_connect_connections", status="needs_reauth") == 1
        assert value(samples, "calendly_connect_host_webhook_backlog", endpoint="crm") == 7
        assert value(samples, "calendly_connect_worker_lag_seconds") == 12.5


async def test_a_database_that_does_not_answer_leaves_its_gauges_out(
    core: Core, database: Database
) -> None:
    database.down = True
    exporter = MetricsExporter(database, None, cache_seconds=0.0)
    app = create_app(
        services_of(core, Readiness(), exporter), make_config(metrics_token=Secret(TOKEN))
    )
    async with AsyncTestClient(app=app, base_url=BASE_URL) as client:
        api = Api(core=core, client=client, readiness=Readiness(), config=make_config())
        down = await scrape(api)
        database.down = False
        back = await scrape(api)

    assert value(down, "calendly_connect_database_readings_up") == 0
    assert ("calendly_connect_worker_lag_seconds", ()) not in down
    assert value(back, "calendly_connect_database_readings_up") == 1
    assert value(back, "calendly_connect_worker_lag_seconds") == 12.5


async def live_stream(app: Litestar, token: str) -> bytes:
    """GET /api/live over ASGI, as a browser that stays until the stream ends; its body."""
    body = bytearray()
    ended = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await ended.wait()  # the client stays until the stream says it has ended
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
            if b"event: expired" in body or not message.get("more_body", False):
                ended.set()

    scope = live_scope(token)
    await app(scope, receive, send)  # type: ignore[arg-type]
    return bytes(body)


async def test_open_live_streams_are_a_gauge(metered: Api) -> None:
    # A token that expires in 2 s ends the stream by itself (`event: expired`).
    token = make_token("alice", expires_in=2)
    stream = asyncio.create_task(live_stream(metered.client.app, token))
    during = await scrape(metered)
    for _ in range(50):
        if value(during, "calendly_connect_live_streams") == 1:
            break
        await asyncio.sleep(0.02)
        during = await scrape(metered)
    answered = await asyncio.wait_for(stream, 10)
    after = await scrape(metered)

    assert b"event: expired" in answered
    assert value(during, "calendly_connect_live_streams") == 1
    assert value(after, "calendly_connect_live_streams") == 0


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/oauth/token", "/oauth/token"),
        ("/users/me", "/users/me"),
        ("/webhook_subscriptions", "/webhook_subscriptions"),
        ("/webhook_subscriptions/AAAA-1234", "/webhook_subscriptions/{uuid}"),
        ("/scheduled_events", "/scheduled_events"),
        ("/scheduled_events/EV-99/invitees", "/scheduled_events/{uuid}/invitees"),
        ("/scheduled_events/EV-99/invitees?page_token=abc", "/scheduled_events/{uuid}/invitees"),
        ("/something/new/alice@example.com", "other"),
    ],
)
def test_calendly_paths_are_labelled_by_template_never_by_id(path: str, template: str) -> None:
    assert calendly_route(path) == template
