"""A front end on another origin (issue 12, item 2 in part): CORS for APP_ORIGINS only."""

from __future__ import annotations

import pytest

from tests.support.http_app import APP_ORIGIN, Api, bearer

PREFLIGHT = {
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "authorization, last-event-id",
}


@pytest.mark.parametrize("path", ["/api/calendly/connection", "/api/meetings", "/api/live"])
async def test_an_allowed_origin_gets_a_cached_preflight(api: Api, path: str) -> None:
    response = await api.client.options(path, headers={"Origin": APP_ORIGIN, **PREFLIGHT})
    assert response.status_code in (200, 204), response.text
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "last-event-id"} <= allowed
    assert "GET" in response.headers["access-control-allow-methods"]
    assert int(response.headers["access-control-max-age"]) >= 600
    # Bearer tokens, not cookies: no credentials mode, and never a wildcard.
    assert "access-control-allow-credentials" not in response.headers


async def test_an_allowed_origin_can_read_the_answer(api: Api) -> None:
    await api.connect("alice")
    response = await api.client.get(
        "/api/calendly/connection", headers={"Origin": APP_ORIGIN, **bearer("alice")}
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://app.example", "https://app.example.evil", "null"]
)
async def test_any_other_origin_gets_no_cors_grant(api: Api, origin: str) -> None:
    preflight = await api.client.options("/api/meetings", headers={"Origin": origin, **PREFLIGHT})
    assert preflight.headers.get("access-control-allow-origin") is None
    assert preflight.status_code < 500
    await api.connect("alice")
    answer = await api.client.get(
        "/api/calendly/connection", headers={"Origin": origin, **bearer("alice")}
    )
    assert answer.headers.get("access-control-allow-origin") is None
