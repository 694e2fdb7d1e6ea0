"""Bearer tokens: only a valid HS256 token for our audience (and issuer) names a user."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import jwt
import pytest
from litestar.testing import AsyncTestClient

from entrypoints.service.http.app import create_app
from tests.support.http_app import (
    AUDIENCE,
    BASE_URL,
    ISSUER,
    JWT_SECRET,
    Api,
    make_config,
    make_token,
    services_of,
)

PROTECTED = "/api/calendly/connection"


def assert_unauthenticated(response_status: int, body: dict[str, object]) -> None:
    assert response_status == 401
    assert body["status"] == 401
    assert str(body["type"]).endswith("not-authenticated")


async def test_no_token_is_401_with_a_bearer_challenge(api: Api) -> None:
    response = await api.client.get(PROTECTED)

    assert_unauthenticated(response.status_code, response.json())
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(
            make_token("alice", secret="another-secret-of-the-same-length-0123456"),
            id="bad-signature",
        ),
        pytest.param(make_token("alice", expires_in=-60), id="expired"),
        pytest.param(make_token("alice", audience="someone-else"), id="wrong-audience"),
        pytest.param(make_token("alice", issuer="https://evil.example"), id="wrong-issuer"),
        pytest.param(make_token("alice", issuer=None), id="no-issuer"),
        pytest.param(
            jwt.encode({"sub": "alice", "aud": AUDIENCE, "iss": ISSUER}, JWT_SECRET, "HS256"),
            id="no-expiry",
        ),
        pytest.param(
            jwt.encode(
                {"sub": "alice", "aud": AUDIENCE, "iss": ISSUER, "exp": 4_000_000_000},
                key="",
                algorithm="none",
            ),
            id="alg-none",
        ),
        pytest.param(make_token(""), id="empty-subject"),
        pytest.param("not.a.jwt", id="garbage"),
    ],
)
async def test_invalid_tokens_are_401(api: Api, token: str) -> None:
    response = await api.client.get(PROTECTED, headers={"authorization": f"Bearer {token}"})

    assert_unauthenticated(response.status_code, response.json())


@pytest.mark.parametrize("header", ["Basic YWxpY2U6cHc=", "Bearer", "Bearer a b", "token"])
async def test_malformed_authorization_headers_are_401(api: Api, header: str) -> None:
    response = await api.client.get(PROTECTED, headers={"authorization": header})

    assert_unauthenticated(response.status_code, response.json())


async def test_a_valid_token_names_the_user(api: Api) -> None:
    token = make_token("alice")

    response = await api.client.get(PROTECTED, headers={"authorization": f"bearer {token}"})

    # Authenticated, and alice simply has no connection yet.
    assert response.status_code == 404
    assert str(response.json()["type"]).endswith("connection-not-found")


async def test_the_issuer_is_not_checked_when_none_is_configured(api: Api) -> None:
    app = create_app(services_of(api.core, api.readiness), make_config(jwt_issuer=None))
    async with AsyncTestClient(app=app, base_url=BASE_URL) as client:
        response = await client.get(
            PROTECTED, headers={"authorization": f"Bearer {make_token('alice', issuer=None)}"}
        )

    assert response.status_code == 404


async def test_dev_login_is_not_there_unless_enabled(api: Api) -> None:
    response = await api.client.post("/api/dev/login", json={"user_id": "alice"})

    assert response.status_code == 404


@asynccontextmanager
async def dev_login_client(api: Api, peer: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app with dev login enabled whose connection comes from `peer`."""
    app = create_app(services_of(api.core, api.readiness), make_config(dev_login_enabled=True))
    # httpx types the ASGI app loosely; Litestar's narrower signature is the same protocol.
    transport = httpx.ASGITransport(app=app, client=(peer, 50000))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield client


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.8.9.10", "::1"])
async def test_dev_login_issues_a_working_one_hour_token(api: Api, peer: str) -> None:
    async with dev_login_client(api, peer) as client:
        login = await client.post("/api/dev/login", json={"user_id": "alice@example.com"})
        token = login.json()["access_token"]
        response = await client.get(PROTECTED, headers={"authorization": f"Bearer {token}"})

    assert login.status_code == 200
    assert login.json()["token_type"] == "Bearer"
    assert login.headers["cache-control"] == "no-store"
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["sub"] == "alice@example.com"
    assert claims["exp"] - claims["iat"] == 3600
    assert response.status_code == 404  # authenticated; no connection yet


@pytest.mark.parametrize("peer", ["192.0.2.7", "10.0.0.1", "2001:db8::1", "::", "testclient"])
@pytest.mark.parametrize("body", [{"user_id": "alice"}, {"user_id": ""}])
async def test_dev_login_refuses_a_client_that_is_not_on_this_machine(
    api: Api, peer: str, body: dict[str, object]
) -> None:
    async with dev_login_client(api, peer) as client:
        response = await client.post("/api/dev/login", json=body)

    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 403
    assert str(problem["type"]).endswith(":forbidden")
    assert "loopback" in problem["detail"]
    assert "access_token" not in response.text


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": ""},
        {"user_id": "x" * 65},
        {"user_id": "alice bob"},
        {"user_id": "<script>"},
        {"user_id": 7},
        {"user_id": "alice", "admin": True},
        {},
    ],
)
async def test_dev_login_rejects_bad_user_ids_with_400(api: Api, body: dict[str, object]) -> None:
    async with dev_login_client(api, "127.0.0.1") as client:
        response = await client.post("/api/dev/login", json=body)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"]
