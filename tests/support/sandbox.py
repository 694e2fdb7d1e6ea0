"""Drive a running Calendly sandbox from tests: OAuth dances, control calls, a webhook receiver."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
from aiohttp import web

from calendly_sandbox import OAuthClient

REDIRECT_URI = "http://127.0.0.1:9/oauth/calendly/callback"


def pkce_pair() -> tuple[str, str]:
    """A code verifier and its S256 challenge, computed as RFC 7636 says."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
    return verifier, challenge


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@dataclass
class Tokens:
    access_token: str
    refresh_token: str
    owner: str
    organization: str | None
    body: dict[str, Any]


@dataclass
class SandboxDriver:
    """A thin typed client for one sandbox: its control API, its OAuth server and its API."""

    http: aiohttp.ClientSession
    url: str
    client: OAuthClient

    # ------------------------------------------------------------ control
    async def control(
        self, method: str, path: str, body: Any = None, expect: int | None = None
    ) -> Any:
        async with self.http.request(method, f"{self.url}{path}", json=body) as response:
            data = await response.json() if response.content_type == "application/json" else None
            if expect is not None:
                assert response.status == expect, (response.status, data)
            return data

    async def create_user(self, name: str, email: str, **extra: Any) -> dict[str, Any]:
        user: dict[str, Any] = await self.control(
            "POST", "/_sandbox/users", {"name": name, "email": email, **extra}, expect=201
        )
        return user

    async def settings(self, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.control(
            "PATCH", "/_sandbox/settings", changes, expect=200
        )
        return result

    async def calls(self, route: str | None = None) -> list[dict[str, Any]]:
        query = f"?{urlencode({'route': route})}" if route else ""
        data = await self.control("GET", f"/_sandbox/calls{query}", expect=200)
        calls: list[dict[str, Any]] = data["calls"]
        return calls

    async def deliveries(self) -> list[dict[str, Any]]:
        data = await self.control("GET", "/_sandbox/deliveries", expect=200)
        deliveries: list[dict[str, Any]] = data["deliveries"]
        return deliveries

    async def fault(self, route: str, **spec: Any) -> None:
        await self.control("POST", "/_sandbox/faults", {"route": route, **spec}, expect=201)

    async def book(self, user_id: str, **spec: Any) -> dict[str, Any]:
        body = {
            "start_time": "2030-03-05T14:30:00.000000Z",
            "invitees": [{"name": "Grace Guest", "email": "grace@example.org"}],
            **spec,
        }
        result: dict[str, Any] = await self.control(
            "POST", f"/_sandbox/users/{user_id}/bookings", body, expect=201
        )
        return result

    # -------------------------------------------------------------- OAuth
    def authorize_url(self, **params: str) -> str:
        query = {
            "client_id": self.client.client_id,
            "response_type": "code",
            "redirect_uri": self.client.redirect_uris[0],
            **params,
        }
        return f"{self.url}/oauth/authorize?{urlencode(query)}"

    async def authorize(self, **params: str) -> aiohttp.ClientResponse:
        """GET the authorize URL without following the redirect (the response is read)."""
        async with self.http.get(self.authorize_url(**params), allow_redirects=False) as resp:
            await resp.read()
            return resp

    async def code_for(self, email: str, challenge: str | None = None, **params: str) -> str:
        extra = {"sandbox_login": email, "state": "st", **params}
        if challenge is not None:
            extra |= {"code_challenge": challenge, "code_challenge_method": "S256"}
        response = await self.authorize(**extra)
        assert response.status == 302, response.status
        return query_of(response.headers["Location"])["code"]

    async def token_request(
        self, form: dict[str, str], *, basic: bool = True, secret: str | None = None
    ) -> aiohttp.ClientResponse:
        secret = self.client.client_secret if secret is None else secret
        headers = {}
        if basic:
            headers["Authorization"] = aiohttp.encode_basic_auth(self.client.client_id, secret)
        else:
            form = {**form, "client_id": self.client.client_id, "client_secret": secret}
        async with self.http.post(f"{self.url}/oauth/token", data=form, headers=headers) as resp:
            await resp.read()
            return resp

    async def connect(self, email: str, **params: str) -> Tokens:
        """The whole PKCE dance for `email` (created on the fly), as an integration does it."""
        verifier, challenge = pkce_pair()
        code = await self.code_for(email, challenge, **params)
        response = await self.token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.client.redirect_uris[0],
                "code_verifier": verifier,
            }
        )
        assert response.status == 200, await response.text()
        return tokens_of(await response.json())

    async def refresh(self, refresh_token: str) -> aiohttp.ClientResponse:
        return await self.token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )

    async def oauth_post(
        self, path: str, form: dict[str, str], *, basic: bool = True, secret: str | None = None
    ) -> aiohttp.ClientResponse:
        """POST a form to an OAuth endpoint (`/oauth/revoke`, ...) as this client (body read)."""
        secret = self.client.client_secret if secret is None else secret
        headers = {}
        if basic:
            headers["Authorization"] = aiohttp.encode_basic_auth(self.client.client_id, secret)
        else:
            form = {**form, "client_id": self.client.client_id, "client_secret": secret}
        async with self.http.post(f"{self.url}{path}", data=form, headers=headers) as resp:
            await resp.read()
            return resp

    # ---------------------------------------------------------------- API
    async def api(
        self,
        method: str,
        path: str,
        token: str | None,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        url = path if path.startswith("http") else f"{self.url}{path}"
        async with self.http.request(
            method, url, params=params, json=json, headers=headers
        ) as resp:
            body = await resp.json() if resp.content_type == "application/json" else None
            return resp.status, body, dict(resp.headers)

    async def me(self, token: str) -> dict[str, Any]:
        status, body, _ = await self.api("GET", "/users/me", token)
        assert status == 200, body
        resource: dict[str, Any] = body["resource"]
        return resource


def tokens_of(body: dict[str, Any]) -> Tokens:
    return Tokens(
        access_token=body["access_token"],
        refresh_token=body["refresh_token"],
        owner=body["owner"],
        organization=body.get("organization"),
        body=body,
    )


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]


@dataclass
class WebhookReceiver:
    """A callback endpoint on loopback that records what arrives and answers as told."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    # Statuses to answer, in order; when empty, 200.
    script: list[int] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # Sent as `Location` with every 3xx answer from the script (to catch redirect following).
    location: str | None = None
    # Seconds to wait before answering, in order (to outlast a delivery timeout); then none.
    pauses: list[float] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(await request.read(), dict(request.headers)))
        self.arrived.set()
        if self.pauses:
            await asyncio.sleep(self.pauses.pop(0))
        status = self.script.pop(0) if self.script else 200
        headers = {"Location": self.location} if self.location and 300 <= status < 400 else None
        return web.Response(status=status, text="ok", headers=headers)

    async def wait_for(self, count: int, seconds: float = 10.0) -> list[Received]:
        async def enough() -> None:
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), seconds)
        return self.received


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    app = web.Application()
    app.router.add_post("/webhooks/calendly", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    receiver.url = f"http://127.0.0.1:{port}/webhooks/calendly"
    try:
        yield receiver
    finally:
        await runner.cleanup()


@dataclass
class ConsentForm:
    """What the sandbox's consent page asks a browser to post back."""

    method: str = ""
    action: str = ""
    hidden: dict[str, str] = field(default_factory=dict)
    user_choices: list[str] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)


class _ConsentParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.form = ConsentForm()
        self.in_plan = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.form.method, self.form.action = a.get("method", "").lower(), a.get("action", "")
        elif tag == "input" and a.get("type") == "hidden":
            self.form.hidden[a.get("name", "")] = a.get("value", "")
        elif tag == "input" and a.get("type") == "radio" and a.get("name") == "user_id":
            self.form.user_choices.append(a.get("value", ""))
        elif tag == "select":
            self.in_plan = a.get("name") == "new_plan"
        elif tag == "option" and self.in_plan:
            self.form.plans.append(a.get("value", ""))
        elif tag == "button" and a.get("name") == "decision":
            self.form.decisions.append(a.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self.in_plan = False


def parse_consent(html: str) -> ConsentForm:
    """Read the consent page's form the way a browser would submit it."""
    parser = _ConsentParser()
    parser.feed(html)
    parser.close()
    return parser.form
