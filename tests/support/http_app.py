"""The HTTP app over the core wired to fakes: its configuration, a client, deliveries, raw ASGI."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
from litestar import Litestar
from litestar.testing import AsyncTestClient

from adapters.prometheus import MetricsExporter
from domain.api_keys import ApiKeyScope
from domain.model import Connection
from domain.secret import Secret
from domain.usecases.queries import MeetingChanges, UnitOfWorkChangeReader
from entrypoints.live import LiveHub
from entrypoints.service.http.config import HttpConfig
from entrypoints.services import NotReady, Services
from tests.fakes.calendly import FakeUser
from tests.support.core import Core
from tests.support.deliveries import envelope, invitee_payload, sign

BASE_URL = "https://api.example"
APP_ORIGIN = "https://app.example"
JWT_SECRET = "e2e-shared-secret-for-hs256-tokens-0123456789"
AUDIENCE = "calendly-connect-e2e"
ISSUER = "https://app.example/auth"
JSON = {"accept": "application/json"}
SESSION_KEY = b"s" * 32


def make_token(
    user_id: str,
    *,
    secret: str = JWT_SECRET,
    audience: str = AUDIENCE,
    issuer: str | None = ISSUER,
    expires_in: float = 600,
    **claims: Any,
) -> str:
    """A bearer token minted the way the app's own login would, independently of the code."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": user_id, "aud": audience, "iat": now}
    payload["exp"] = now + expires_in
    if issuer is not None:
        payload["iss"] = issuer
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(user_id: str) -> dict[str, str]:
    return {"authorization": f"Bearer {make_token(user_id)}"}


async def new_api_key(core: Core, scope: str = "read", name: str = "the host's back end") -> str:
    """A server API key of `scope`, made as `calendly-connect api-keys create` makes one."""
    created = await core.create_api_key(name, ApiKeyScope(scope))
    return created.secret.reveal()


def key_auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def make_config(**overrides: Any) -> HttpConfig:
    settings: dict[str, Any] = {
        "jwt_secrets": (Secret(JWT_SECRET),),
        "jwt_audience": AUDIENCE,
        "jwt_issuer": ISSUER,
        "dev_login_enabled": False,
        "app_origins": (APP_ORIGIN,),
        "public_base_url": BASE_URL,
        "secure_cookies": True,
        "session_keys": (("k1", SESSION_KEY),),
    }
    settings.update(overrides)
    return HttpConfig(**settings)


@dataclass
class Readiness:
    """A steerable readiness probe: `ready = False` is a database that does not answer;
    `problems` lists any other failing checks."""

    ready: bool = True
    problems: list[NotReady] = field(default_factory=list)
    calls: int = 0

    async def __call__(self) -> Sequence[NotReady]:
        self.calls += 1
        down = [] if self.ready else [NotReady("database", "the database does not answer")]
        return [*down, *self.problems]


def services_of(
    core: Core,
    readiness: Callable[[], Awaitable[Sequence[NotReady]]],
    metrics: MetricsExporter | None = None,
) -> Services:
    return Services(
        start_connect=core.start_connect,
        complete_connect=core.complete_connect,
        reconnect=core.reconnect,
        disconnect=core.disconnect,
        handle_webhook=core.handle_webhook,
        connection_status=core.status,
        list_meetings=core.meetings,
        meeting_changes=MeetingChanges(UnitOfWorkChangeReader(core.db.factory())),
        authenticate_api_key=core.authenticate_api_key,
        list_connections=core.list_connections,
        read_changes=core.read_changes,
        erase_user=core.erase_user,
        live_hub=LiveHub(),
        readiness=readiness,
        metrics=metrics,
    )


@dataclass
class Api:
    """The app under test with its fakes, and the few moves every test makes."""

    core: Core
    client: AsyncTestClient[Litestar]
    readiness: Readiness
    config: HttpConfig
    users: dict[str, FakeUser] = field(default_factory=dict)

    async def start(self, user_id: str) -> httpx.Response:
        return await self.client.post("/api/calendly/connect", headers=bearer(user_id))

    def approve(self, started: httpx.Response, calendly_user: FakeUser) -> str:
        """The person approves on Calendly's consent page: Calendly issues a code."""
        query = parse_qs(urlsplit(started.json()["authorization_url"]).query)
        return self.core.calendly.issue_code(
            calendly_user, query["code_challenge"][0], query["redirect_uri"][0]
        )

    async def callback(
        self, params: dict[str, str], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.client.get("/oauth/calendly/callback", params=params, headers=headers)

    async def connect(
        self, user_id: str, email: str | None = None, *, paid: bool = True
    ) -> FakeUser:
        """The whole popup round trip in this client's browser; returns the Calendly user."""
        calendly_user = self.core.calendly.add_user(email or f"{user_id}@example.com", paid=paid)
        self.users[user_id] = calendly_user
        started = await self.start(user_id)
        assert started.status_code == 200, started.text
        code = self.approve(started, calendly_user)
        done = await self.callback({"state": started.json()["state"], "code": code}, JSON)
        assert done.status_code == 200, done.text
        return calendly_user

    def connection(self, user_id: str) -> Connection:
        return self.core.db.connections[user_id]

    def stamp(self) -> int:
        return int(self.core.clock.now().timestamp())

    async def deliver(
        self,
        body: bytes,
        *,
        user_id: str | None = None,
        key: str | None = None,
        signature: str | None = None,
        path: str | None = None,
        content_type: str = "application/json",
    ) -> httpx.Response:
        """POST a delivery as Calendly would: to the connection's URL, signed with its key."""
        if user_id is not None:
            connection = self.connection(user_id)
            assert connection.signing_key is not None
            key = key or connection.signing_key.reveal()
            path = path or f"/webhooks/calendly/{connection.webhook_token}"
        headers = {"content-type": content_type}
        if signature is None and key is not None:
            signature = sign(body, key, self.stamp())
        if signature is not None:
            headers["calendly-webhook-signature"] = signature
        return await self.client.post(path or "/webhooks/calendly", content=body, headers=headers)


def booking(host: FakeUser, event_id: str = "e1", invitee_id: str = "i1", **kw: Any) -> bytes:
    payload = invitee_payload(host_uri=host.uri, event_id=event_id, invitee_id=invitee_id, **kw)
    return envelope("invitee.created", payload, host.uri)


def cancellation(
    host: FakeUser,
    event_id: str = "e1",
    invitee_id: str = "i1",
    start: str = "2030-03-05T14:30:00.000000Z",
) -> bytes:
    payload = invitee_payload(
        host_uri=host.uri,
        event_id=event_id,
        invitee_id=invitee_id,
        start=start,
        status="canceled",
        event_status="canceled",
        canceler_type="invitee",
    )
    return envelope("invitee.canceled", payload, host.uri)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    chunks_read: int


async def raw_request(
    app: Litestar,
    method: str,
    path: str,
    headers: Sequence[tuple[bytes, bytes]],
    chunks: Sequence[bytes] = (),
    *,
    hang_up: bool = False,
) -> RawResponse:
    """Drive the ASGI app directly: any header bytes, a body in chunks, no Content-Length;
    `hang_up`: the client goes away after the chunks instead of ending the body."""
    pending = list(chunks)
    read = 0

    async def receive() -> Any:
        nonlocal read
        if not pending and hang_up:
            return {"type": "http.disconnect"}
        if not pending:
            return {"type": "http.request", "body": b"", "more_body": False}
        read += 1
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending) or hang_up}

    status = 0
    response_headers: dict[str, str] = {}
    body = bytearray()

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            for name, value in message.get("headers", []):
                response_headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(http_scope(method, path, headers), receive, send)  # type: ignore[arg-type]
    return RawResponse(status=status, headers=response_headers, body=bytes(body), chunks_read=read)


def http_scope(
    method: str, path: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> dict[str, Any]:
    """The ASGI scope of an HTTPS request to api.example with `headers` (besides Host)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"api.example"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("api.example", 443),
    }


def live_scope(token: str) -> dict[str, Any]:
    """The ASGI scope of `GET /api/live` with `token`, for tests that drive the app by hand (a
    stream that stays open until the test leaves, which the test client cannot do)."""
    return http_scope("GET", "/api/live", [(b"authorization", f"Bearer {token}".encode())])
