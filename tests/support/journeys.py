"""What a user does against the running service (tests/support/service.py), over real HTTP.

Shared by the fuzzing and canary suites: connect through the sandbox's consent page, find the
sandbox user behind an email, list meetings. Every response these helpers read is handed to an
optional `seen` callback, so a test can inspect every byte the service sent back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

import aiohttp

from tests.support.sandbox import SandboxDriver, query_of
from tests.support.service import RunningService

# Called with each response's status, headers and body text.
Seen = Callable[[int, Mapping[str, str], str], None]


def _ignore(status: int, headers: Mapping[str, str], body: str) -> None:
    return None


@dataclass(frozen=True)
class Connected:
    """A finished connect: the connection as the API showed it, and the OAuth round trip."""

    connection: dict[str, Any]
    state: str
    code: str
    binding: str


async def call(
    http: aiohttp.ClientSession,
    service: RunningService,
    method: str,
    path: str,
    user: str | None,
    *,
    seen: Seen = _ignore,
    **kw: Any,
) -> tuple[int, Any]:
    """One API call as `user` (None: no Authorization header); status and decoded body."""
    headers = dict(kw.pop("headers", {}))
    if user is not None:
        headers.update(service.auth(user))
    async with http.request(method, f"{service.url}{path}", headers=headers, **kw) as response:
        text = await response.text()
        seen(response.status, dict(response.headers), text)
        body: Any = None
        if response.content_type.endswith("json"):
            body = await response.json(content_type=None)
        return response.status, body


async def connect(
    http: aiohttp.ClientSession,
    service: RunningService,
    user: str,
    email: str,
    *,
    seen: Seen = _ignore,
    html: bool = False,
) -> Connected:
    """What the popup does: start, approve at Calendly (the sandbox), follow the redirect back.

    The callback is asked for JSON, or with `html` for the popup page a browser gets (the
    connection then comes from `GET /api/calendly/connection`).
    """
    async with http.post(
        f"{service.url}/api/calendly/connect", headers=service.auth(user)
    ) as response:
        text = await response.text()
        seen(response.status, dict(response.headers), text)
        assert response.status == 200, text
        started = await response.json()
        cookie = SimpleCookie(response.headers["Set-Cookie"])
    binding = cookie["cc_oauth_binding"].value
    url = f"{started['authorization_url']}&sandbox_login={email}"
    async with http.get(url, allow_redirects=False) as response:
        assert response.status == 302, await response.text()
        callback = response.headers["Location"]
    assert callback.startswith(f"{service.url}/oauth/calendly/callback?")
    query = query_of(callback)
    accept = "text/html" if html else "application/json"
    async with http.get(
        callback, headers={"Cookie": f"cc_oauth_binding={binding}", "Accept": accept}
    ) as response:
        text = await response.text()
        seen(response.status, dict(response.headers), text)
        assert response.status == 200, text
    if html:
        status, connection = await call(
            http, service, "GET", "/api/calendly/connection", user, seen=seen
        )
        assert status == 200, connection
    else:
        connection = json.loads(text)["connection"]
    return Connected(
        connection=connection, state=query["state"], code=query["code"], binding=binding
    )


async def sandbox_user_id(sandbox: SandboxDriver, email: str) -> str:
    users = (await sandbox.control("GET", "/_sandbox/users", expect=200))["users"]
    return str(next(u["id"] for u in users if u["email"] == email))


async def meetings(
    http: aiohttp.ClientSession, service: RunningService, user: str, *, seen: Seen = _ignore
) -> list[dict[str, Any]]:
    status, body = await call(http, service, "GET", "/api/meetings", user, seen=seen)
    assert status == 200, body
    found: list[dict[str, Any]] = body["meetings"]
    return found
