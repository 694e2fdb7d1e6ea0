"""App-wide behaviour: the error table, request ids, logging, security headers, OpenAPI."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import structlog
from litestar.testing import AsyncTestClient

from adapters.crypto import DecryptionFailed
from domain.errors import (
    AccountAlreadyConnected,
    AuthorizationDenied,
    AuthorizationStateInvalid,
    CalendlyError,
    CalendlyUnavailable,
    ConcurrentUpdate,
    ConnectionNotFound,
    CursorExpired,
    InsufficientScope,
    InvalidGrant,
    InvalidSignature,
    NotAuthenticated,
    RateLimited,
    ReauthorizationRequired,
    StorageUnavailable,
    UnusablePayload,
)
from domain.ports import MeetingQuery
from domain.usecases.queries import GetConnectionStatus, ListMeetings, MeetingsPage
from domain.usecases.views import ConnectionView
from entrypoints.service.http.app import create_app
from entrypoints.service.http.errors import ERROR_TABLE
from tests.support.http_app import BASE_URL, Api, bearer, booking, make_config, services_of

CANARY = "canary-Zx81-secret-value"


class FakeOperationalError(Exception):
    """Stands in for psycopg.OperationalError escaping an adapter untranslated."""


class RaisingStatus(GetConnectionStatus):
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def __call__(self, user_id: str) -> ConnectionView:
        raise self.error


class RaisingMeetings(ListMeetings):
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def __call__(self, user_id: str, query: MeetingQuery) -> MeetingsPage:
        raise self.error


def client_raising(api: Api, error: Exception) -> AsyncTestClient[Any]:
    services = dataclasses.replace(
        services_of(api.core, api.readiness),
        connection_status=RaisingStatus(error),
        list_meetings=RaisingMeetings(error),
    )
    config = make_config(infrastructure_errors=(FakeOperationalError,))
    return AsyncTestClient(app=create_app(services, config), base_url=BASE_URL)


@pytest.mark.parametrize(
    ("error", "status", "slug", "retry_after"),
    [
        (NotAuthenticated("no"), 401, "not-authenticated", None),
        (InsufficientScope("write"), 403, "insufficient-scope", None),
        (ConnectionNotFound("alice"), 404, "connection-not-found", None),
        (CursorExpired(), 410, "cursor-expired", None),
        (AuthorizationStateInvalid("used"), 400, "authorization-state-invalid", None),
        (AuthorizationDenied("access_denied", None), 400, "authorization-denied", None),
        (AccountAlreadyConnected("uri"), 409, "account-already-connected", None),
        (ConcurrentUpdate("moved"), 409, "concurrent-update", None),
        (ReauthorizationRequired("alice", "gone"), 409, "reauthorization-required", None),
        (InvalidSignature("bad"), 401, "invalid-signature", None),
        (UnusablePayload("bad"), 400, "unusable-payload", None),
        (CalendlyUnavailable(503, {"secret": CANARY}), 502, "calendly-unavailable", None),
        (RateLimited(429, None, retry_after=12.2), 503, "calendly-rate-limited", "13"),
        (InvalidGrant(400, {"error": CANARY}), 502, "calendly-error", None),
        (CalendlyError(500, CANARY), 502, "calendly-error", None),
        (StorageUnavailable(f"host=db password={CANARY}"), 503, "storage-unavailable", "5"),
        (FakeOperationalError(f"password={CANARY}"), 503, "storage-unavailable", "5"),
        (
            DecryptionFailed("the key id 'k9' is not configured"),
            500,
            "stored-credentials-unreadable",
            None,
        ),
    ],
)
async def test_the_error_table(
    api: Api, error: Exception, status: int, slug: str, retry_after: str | None
) -> None:
    async with client_raising(api, error) as client:
        response = await client.get("/api/calendly/connection", headers=bearer("alice"))

    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert {"type", "title", "status", "detail"} <= set(problem)
    assert problem["status"] == status
    assert problem["type"].endswith(slug)
    assert response.headers.get("retry-after") == retry_after
    assert CANARY not in response.text


def test_every_domain_error_in_the_table_is_covered_above() -> None:
    assert len(ERROR_TABLE) == 16


async def test_an_unexpected_exception_is_a_500_problem_without_details(api: Api) -> None:
    async with client_raising(api, RuntimeError(f"boom {CANARY}")) as client:
        with structlog.testing.capture_logs() as logs:
            response = await client.get("/api/meetings", headers=bearer("alice"))

    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 500
    assert problem["request_id"] == response.headers["x-request-id"]
    for leak in (CANARY, "Traceback", "RuntimeError", "boom", ".py"):
        assert leak not in response.text
    assert [e["error_type"] for e in logs if e["event"] == "http.unexpected_error"] == [
        "RuntimeError"
    ]


async def test_unknown_routes_and_methods_are_problems_too(api: Api) -> None:
    missing = await api.client.get("/nowhere")
    wrong_method = await api.client.put("/api/meetings", headers=bearer("alice"))

    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert wrong_method.status_code == 405
    assert "GET" in wrong_method.headers["allow"]
    for response in (missing, wrong_method):
        assert response.headers["x-request-id"]


async def test_a_sane_request_id_is_echoed(api: Api) -> None:
    response = await api.client.get("/health/live", headers={"x-request-id": "abc-123.XYZ_9"})

    assert response.headers["x-request-id"] == "abc-123.XYZ_9"


@pytest.mark.parametrize(
    "incoming", [None, b"", b"has spaces", b"x" * 200, b"<script>", "a\u00e9b".encode("latin-1")]
)
async def test_other_request_ids_are_replaced_by_a_fresh_one(
    api: Api, incoming: bytes | None
) -> None:
    headers = {} if incoming is None else {b"x-request-id": incoming}

    first = await api.client.get("/health/live", headers=headers)
    second = await api.client.get("/health/live", headers=headers)

    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_one_log_line_per_request_with_its_context(api: Api) -> None:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        response = await api.client.get(
            "/api/meetings?status=active&cursor=", headers={**bearer("alice"), "x-request-id": "r1"}
        )

    lines = [e for e in logs if e["event"] == "http.request"]
    assert len(lines) == 1
    [line] = lines
    assert line["method"] == "GET"
    assert line["path"] == "/api/meetings"
    assert line["status"] == response.status_code
    assert isinstance(line["duration_ms"], float)
    assert line["request_id"] == "r1"
    assert line["user_id"] == "alice"
    # Nothing stays bound after the request.
    assert "request_id" not in structlog.contextvars.get_contextvars()
    assert "user_id" not in structlog.contextvars.get_contextvars()


async def test_logs_carry_no_secrets_through_a_whole_flow(api: Api) -> None:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        host = await api.connect("alice")
        assert (await api.deliver(booking(host), user_id="alice")).status_code == 200
        await api.client.get("/api/calendly/connection", headers=bearer("alice"))
        await api.client.delete("/api/calendly/connection", headers=bearer("alice"))

    text = repr(logs)
    connection = api.connection("alice")
    secrets = [g.access for g in api.core.calendly.grants]
    secrets += [g.refresh for g in api.core.calendly.grants]
    secrets += [s.signing_key for s in api.core.calendly.subscriptions.values()]
    secrets += [connection.webhook_token]
    assert secrets
    for secret in secrets:
        assert secret not in text
    assert any(e.get("path") == "/webhooks/calendly/{token}" for e in logs)


async def test_security_headers(api: Api) -> None:
    page = await api.client.get("/oauth/calendly/callback?state=x")
    api_response = await api.client.get("/api/meetings", headers=bearer("alice"))
    health = await api.client.get("/health/live")

    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for response in (page, api_response, health):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    assert api_response.headers["cache-control"] == "no-store"
    assert "content-security-policy" not in api_response.headers


EXPECTED_OPERATIONS = {
    ("/health/live", "get"): "liveness",
    ("/health/ready", "get"): "readiness",
    ("/api/calendly/connect", "post"): "startConnect",
    ("/api/calendly/connect/complete", "post"): "completeConnectHandOff",
    ("/api/calendly/reconnect", "post"): "reconnect",
    ("/api/calendly/connection", "get"): "getConnection",
    ("/api/calendly/connection", "delete"): "disconnect",
    ("/api/meetings", "get"): "listMeetings",
    ("/api/live", "get"): "liveUpdates",
    ("/oauth/calendly/callback", "get"): "completeConnect",
    ("/webhooks/calendly", "post"): "receiveWebhook",
    ("/webhooks/calendly/{token}", "post"): "receiveConnectionWebhook",
    ("/client/v1/integrity", "get"): "jsClientIntegrity",
    ("/v1/changes", "get"): "serverListChanges",
    ("/v1/connections", "get"): "serverListConnections",
    ("/v1/users/{user_id}/connection", "get"): "serverGetConnection",
    ("/v1/users/{user_id}/connection", "delete"): "serverDisconnect",
    ("/v1/users/{user_id}/meetings", "get"): "serverListMeetings",
    ("/v1/users/{user_id}/sessions", "post"): "serverCreateSession",
    ("/v1/users/{user_id}", "delete"): "serverEraseUser",
}


async def test_the_openapi_document_lists_every_route_with_an_operation_id(api: Api) -> None:
    app = create_app(services_of(api.core, api.readiness), make_config(dev_login_enabled=True))
    async with AsyncTestClient(app=app, base_url=BASE_URL) as client:
        response = await client.get("/schema/openapi.json")

    assert response.status_code == 200
    document = response.json()
    operations = {
        (path, method): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    }
    expected = {**EXPECTED_OPERATIONS, ("/api/dev/login", "post"): "devLogin"}
    assert {key: op["operationId"] for key, op in operations.items()} == expected
    for operation in operations.values():
        assert operation.get("description"), operation["operationId"]
    assert operations[("/api/meetings", "get")]["security"] == [{"bearer": []}]
    assert "bearer" in document["components"]["securitySchemes"]
    listed = {p["name"] for p in operations[("/api/meetings", "get")]["parameters"]}
    assert {"status", "starts_after", "starts_before", "cursor", "limit"} <= listed
    callback = {p["name"] for p in operations[("/oauth/calendly/callback", "get")]["parameters"]}
    assert callback == {"state", "code", "error", "error_description"}
