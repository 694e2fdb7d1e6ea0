"""Probes: liveness always answers; readiness follows the database."""

from __future__ import annotations

from litestar.testing import AsyncTestClient

from entrypoints.service.http.app import create_app
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
    assert response.json() == {"status": "unavailable"}


async def test_a_failing_probe_means_not_ready_rather_than_a_500(api: Api) -> None:
    async def broken() -> bool:
        raise ConnectionRefusedError("db down")

    app = create_app(services_of(api.core, broken), api.config)
    async with AsyncTestClient(app=app, base_url=BASE_URL) as client:
        response = await client.get("/health/ready")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}
