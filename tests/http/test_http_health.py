"""Probes: liveness always answers; readiness follows the database, the schema's migrations
and the live-update listener, and names what is wrong."""

from __future__ import annotations

from litestar.testing import AsyncTestClient

from entrypoints.service.http.app import create_app
from entrypoints.services import NotReady
from tests.support.http_app import BASE_URL, Api, services_of


async def test_liveness_answers_ok(api: Api) -> None:
    response = await api.client.get("/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readiness_answers_ok_when_the_database_does(api: Api) -> None:
    response = await api.client.get("/health/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert api.readiness.calls == 1


async def test_readiness_answers_503_when_the_database_does_not(api: Api) -> None:
    api.readiness.ready = False

    response = await api.client.get("/health/ready")

    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:calendly-connect:problem:not-ready"
    assert body["failing"] == [{"check": "database", "detail": "the database does not answer"}]
    assert "database" in body["detail"]


async def test_readiness_names_a_missing_migration_and_a_lost_listener(api: Api) -> None:
    api.readiness.problems = [
        NotReady("migrations", "the database lacks 1 migration(s) this code expects (0099_x.sql)"),
        NotReady("live_listener", "the live-update listener is not connected to the database"),
    ]

    response = await api.client.get("/health/ready")

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    body = response.json()
    assert [f["check"] for f in body["failing"]] == ["migrations", "live_listener"]
    assert "0099_x.sql" in body["detail"]
    assert body["status"] == 503


async def test_a_failing_probe_means_not_ready_rather_than_a_500(api: Api) -> None:
    async def broken() -> list[NotReady]:
        raise ConnectionRefusedError("db down")

    app = create_app(services_of(api.core, broken), api.config)
    async with AsyncTestClient(app=app, base_url=BASE_URL) as client:
        response = await client.get("/health/ready")

    assert response.status_code == 503
    assert [f["check"] for f in response.json()["failing"]] == ["database"]
