"""`make example` for real: the launcher starts the stack and the example host app, the service
trusts the example's ES256 tokens (through its JWKS), lets its origin in, and the example receives
the service's host webhooks (Standard Webhooks)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.host_app import ExampleStack, example_stack
from tests.support.sandbox import query_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack() -> Iterator[ExampleStack]:
    with example_stack() as running:
        yield running


async def sign_in(example: aiohttp.ClientSession, stack: ExampleStack, user: str) -> str:
    """Sign in at the example as `user` (its session cookie stays in `example`); the token."""
    async with example.post(f"{stack.example_local}/api/session", json={"user": user}) as r:
        assert r.status == 200, await r.text()
        token: str = (await r.json())["token"]
        return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_service_accepts_the_examples_token(stack: ExampleStack) -> None:
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as example,
        aiohttp.ClientSession() as http,
    ):
        token = await sign_in(example, stack, "smoke-user")
        url = f"{stack.service}/api/calendly/connection"
        async with http.get(url, headers=bearer(token)) as response:
            # Authenticated (not 401): this user simply never connected.
            assert response.status == 404, await response.text()
            problem = await response.json()
            assert problem["type"].rsplit(":", 1)[1] == "connection-not-found"
        tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        async with http.get(url, headers=bearer(tampered)) as response:
            assert response.status == 401


async def test_the_service_lets_the_examples_page_load_the_client_and_call_it(
    stack: ExampleStack,
) -> None:
    origin = stack.example
    async with aiohttp.ClientSession() as http:
        async with http.get(stack.example_local + "/") as response:
            assert response.status == 200
            policy = response.headers["Content-Security-Policy"]
            assert f"script-src 'self' {stack.service};" in policy
            assert f'content="{stack.service}"' in await response.text()
        client_url = f"{stack.service}/client/v1/calendly-connect.js"
        async with http.get(client_url, headers={"Origin": origin}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] in ("*", origin)
            assert "createCalendlyConnect" in await response.text()
        preflight = {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        url = f"{stack.service}/api/calendly/connect"
        async with http.options(url, headers=preflight) as response:
            assert response.status in (200, 204)
            assert response.headers["Access-Control-Allow-Origin"] == origin


def completion_pair() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


async def connect(http: aiohttp.ClientSession, stack: ExampleStack, token: str, email: str) -> None:
    """What the popup and the client do, cross-site: start, approve at the sandbox, hand off."""
    verifier, challenge = completion_pair()
    async with http.post(
        f"{stack.service}/api/calendly/connect",
        json={"completion_challenge": challenge},
        headers=bearer(token),
    ) as response:
        assert response.status == 200, await response.text()
        started = await response.json()
    authorize = f"{started['authorization_url']}&sandbox_login={email}"
    async with http.get(authorize, allow_redirects=False) as response:
        assert response.status == 302, await response.text()
        query = query_of(response.headers["Location"])
    body = {"state": query["state"], "code": query["code"], "completion_verifier": verifier}
    async with http.post(
        f"{stack.service}/api/calendly/connect/complete", json=body, headers=bearer(token)
    ) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["connection"]["status"] == "active"


async def notifications(example: aiohttp.ClientSession, stack: ExampleStack) -> list[Any]:
    async with example.get(f"{stack.example_local}/api/notifications") as response:
        assert response.status == 200
        found: list[Any] = (await response.json())["notifications"]
        return found


async def test_a_connection_needing_reauthorization_is_notified_to_the_example(
    stack: ExampleStack,
) -> None:
    email = "notified@example.com"
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as example,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        token = await sign_in(example, stack, "notified-user")
        await connect(http, stack, token, email)
        async with http.get(f"{stack.sandbox}/_sandbox/users") as response:
            users = (await response.json())["users"]
        uuid = next(user["id"] for user in users if user["email"] == email)
        # The user removes the app in Calendly; the next reconnect finds the grant gone.
        async with http.post(f"{stack.sandbox}/_sandbox/users/{uuid}/revoke_app") as response:
            assert response.status == 200
        _, challenge = completion_pair()
        async with http.post(
            f"{stack.service}/api/calendly/reconnect",
            json={"completion_challenge": challenge},
            headers=bearer(token),
        ) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
            assert answer["outcome"] == "authorization_required"
        async with http.get(
            f"{stack.service}/api/calendly/connection", headers=bearer(token)
        ) as response:
            assert (await response.json())["status"] == "needs_reauth"
        # The host webhooks' dispatcher (started by the dev stack) sends the change log to
        # HOST_WEBHOOK_URL, signed the Standard Webhooks way; the example keeps what verifies.
        seen: list[Any] = []
        for _ in range(150):
            seen = await notifications(example, stack)
            if any(n["type"] == "connection.needs_reauth" for n in seen):
                break
            await asyncio.sleep(0.2)
        mine = [(n["type"], n["user_id"]) for n in reversed(seen)]  # oldest first
        assert ("connection.connected", "notified-user") in mine
        assert mine[-1] == ("connection.needs_reauth", "notified-user")
        sequences = [n["sequence"] for n in reversed(seen)]
        assert sequences == sorted(sequences)
        assert all(n["id"].startswith("msg_") for n in seen)
