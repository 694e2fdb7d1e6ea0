"""What the Schemathesis run (tests/fuzz) found, pinned down so it stays fixed without fuzzing.

Each test names a mismatch between the OpenAPI document and the service, or a crash, that the
fuzzer reported once.
"""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar

from tests.support.http_app import Api, bearer, raw_request


async def document(api: Api) -> dict[str, Any]:
    response = await api.client.get("/schema/openapi.json")
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    return schema


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        # Litestar 2 listed only the first handler's method (litestar-org/litestar#4169).
        ("/api/calendly/connection", "DELETE, GET, OPTIONS"),
        ("/api/meetings", "GET, OPTIONS"),
        ("/webhooks/calendly", "OPTIONS, POST"),
    ],
)
async def test_options_lists_every_method_of_the_path(api: Api, path: str, methods: str) -> None:
    response = await api.client.options(path)

    assert response.status_code == 204
    assert response.headers["allow"] == methods


async def test_a_non_ascii_digit_as_last_event_id_is_a_400_not_a_crash(app: Litestar) -> None:
    # "²" (Latin-1 0xB2) passed str.isdigit(), and int() then raised: a 500.
    headers = [
        (b"authorization", bearer("alice")["authorization"].encode()),
        (b"last-event-id", b"\xb2"),
    ]
    response = await raw_request(app, "GET", "/api/live", headers)

    assert response.status == 400
    assert b"Last-Event-ID" in response.body


@pytest.mark.parametrize("value", ["0.5", "1700000000", "2030-01-01", "yesterday"])
async def test_instants_must_be_rfc3339_date_times(api: Api, value: str) -> None:
    # Litestar's datetime conversion also took numbers as Unix times.
    response = await api.client.get(
        "/api/meetings", params={"starts_after": value}, headers=bearer("alice")
    )

    assert response.status_code == 400
    assert response.json()["errors"][0]["parameter"] == "starts_after"


@pytest.mark.parametrize(
    "value", ["2030-01-01T00:00:00Z", "2030-01-01t00:00:00.123456789+05:30", "2030-01-01 00:00:00Z"]
)
async def test_rfc3339_date_times_are_accepted(api: Api, value: str) -> None:
    response = await api.client.get(
        "/api/meetings", params={"starts_before": value}, headers=bearer("alice")
    )

    assert response.status_code == 200, response.text


async def test_the_document_describes_what_the_routes_really_take_and_answer(api: Api) -> None:
    paths = (await document(api))["paths"]

    for path in ("/webhooks/calendly", "/webhooks/calendly/{token}"):
        delivery = paths[path]["post"]
        assert delivery["requestBody"]["required"] is True
        assert set(delivery["requestBody"]["content"]) == {"application/json"}
        (signature,) = [p for p in delivery["parameters"] if p["in"] == "header"]
        assert signature["name"] == "Calendly-Webhook-Signature"

    callback = paths["/oauth/calendly/callback"]["get"]["responses"]
    assert set(callback["200"]["content"]) == {"application/json", "text/html"}
    for status in ("400", "401", "409", "502", "503"):
        assert set(callback[status]["content"]) == {"application/problem+json", "text/html"}

    live = paths["/api/live"]["get"]
    assert set(live["responses"]["200"]["content"]) == {"text/event-stream"}
    (last_event_id,) = live["parameters"]
    assert last_event_id["schema"]["type"] == "string"  # never null: a header has a value
    assert last_event_id["schema"]["pattern"] == "^[0-9]{0,18}$"

    assert "503" in paths["/health/ready"]["get"]["responses"]
    cursor = next(p for p in paths["/api/meetings"]["get"]["parameters"] if p["name"] == "cursor")
    assert "minLength" in str(cursor["schema"])
