"""Secret canaries (RELIABILITY.md promise 7, row 25): no secret in clear text, anywhere.

The whole service runs (tests/support/service.py: container, Postgres, uvicorn, plus rounds
of the worker) against a sandbox that plays a hostile Calendly: when armed, it answers with
errors whose bodies echo every credential it was sent (the form with its code, verifier,
refresh token and client secret, the Authorization header, the subscription's signing key),
as bare values, under their names and URL-encoded. The configured secrets are recognisable
canaries (`CANARY...`), and so are the tokens the sandbox issues. The test drives connect
(JSON and popup page), webhooks (per-subscription key and app key), an on-demand refresh, the
worker's refresh and sync, Calendly's 500/401/400/429 with echoing bodies, a refused code
exchange, a failed subscription and revoke, and exceptions forced inside a request handler
and inside the worker, with the canaries in their messages.

It captures every log line the service writes (the project's own logging, JSON, at DEBUG,
with the secrets registered as `calendly-connect serve` registers them), every response the
test receives (status, headers, body) and a `pg_dump` of the database. Then every canary -
client secret, app signing key, JWT secret, token encryption key, each subscription's signing
key, every access and refresh token, authorization code and PKCE verifier, and the users'
bearer JWTs - is looked for in every encoding it could take (as is, URL-encoded, JSON-escaped,
base64, hex as pg_dump shows bytea, inside HTTP Basic credentials): none may appear.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import structlog
from aiohttp import web

import calendly_sandbox.world
from adapters.calendly.api import AiohttpCalendlyApi
from calendly_sandbox import SANDBOX, OAuthClient, Sandbox, SandboxConfig, Settings, create_app
from domain.secret import Secret
from entrypoints.container import Container, resolve
from entrypoints.logging import configure_logging, register_secret
from entrypoints.service.worker import build_worker
from entrypoints.settings import load_settings
from tests.support.deliveries import envelope, invitee_payload, sign
from tests.support.journeys import call, connect, sandbox_user_id
from tests.support.sandbox import SandboxDriver
from tests.support.service import RunningService, running_service, service_environment
from tests.support.sse import EventReader

MARK = "CANARY"
# The base64 of '{"alg":' that starts every JWT: a bearer token anywhere is a leak.
JWT_PREFIX = "eyJhbGciOi"
# Loggers of the sandbox's own aiohttp server: Calendly's side, not the service's.
SANDBOX_LOGGERS = ("aiohttp.server", "aiohttp.web", "aiohttp.access")


def canary(kind: str) -> str:
    # '/', '+', '=' and '&' make the URL-encoded and JSON forms differ from the plain one.
    return f"{MARK}{secrets.token_hex(6)}-{kind}/+=&{secrets.token_urlsafe(12)}"


@dataclass(frozen=True)
class Canaries:
    """The configured secrets, each recognisable wherever it ends up."""

    client_secret: str = field(default_factory=lambda: canary("client-secret"))
    signing_key: str = field(default_factory=lambda: canary("app-signing-key"))
    jwt_secret: str = field(default_factory=lambda: canary("jwt-secret-at-least-32-chars"))
    # 32 bytes of AES key that spell the mark themselves.
    encryption_key: bytes = field(default_factory=lambda: MARK.encode() + os.urandom(26))

    def environ(self) -> dict[str, str]:
        key = base64.urlsafe_b64encode(self.encryption_key).decode()
        return {
            "CALENDLY_OAUTH_CLIENT_SECRET": self.client_secret,
            "CALENDLY_WEBHOOK_SIGNING_KEY": self.signing_key,
            "JWT_SECRET": self.jwt_secret,
            "TOKEN_ENCRYPTION_KEY": f"k1:{key}",
            "LOG_LEVEL": "DEBUG",
            # The worker gets its own, wider margin (see worker_round); the service keeps 300 s.
            "TOKEN_REFRESH_MARGIN_SECONDS": "300",
        }


def text_forms(value: str) -> set[str]:
    """How a secret string can show up in text: as is, encoded, escaped, or as bytes."""
    raw = value.encode("utf-8")
    forms = {
        value,
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value, safe=""),
        urllib.parse.quote(value),
        json.dumps(value)[1:-1],
        repr(value)[1:-1],
        raw.hex(),
    }
    forms |= bytes_forms(raw)
    # A truncated copy (a cut log line, a column limit) leaks just as well.
    if len(value) >= 32:
        forms |= {value[:20], value[-20:]}
    return forms


def bytes_forms(raw: bytes) -> set[str]:
    b64 = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    return {b64, b64.rstrip("="), url, url.rstrip("="), raw.hex(), raw.hex().upper()}


# ------------------------------------------------------------ a hostile Calendly
@dataclass
class Echo:
    status: int
    remaining: int


@dataclass
class HostileCalendly:
    """Sandbox middleware: records every credential sent to Calendly; echoes them when armed."""

    armed: dict[str, Echo] = field(default_factory=dict)
    verifiers: list[str] = field(default_factory=list)
    bearer_tokens: set[str] = field(default_factory=set)
    echoed: int = 0

    def arm(self, route: str, status: int, count: int = 1) -> None:
        """The next `count` calls of `route` ("METHOD /path" prefix) echo with `status`."""
        self.armed[route] = Echo(status, count)

    def disarm(self) -> None:
        self.armed.clear()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith("/_sandbox"):
            return await handler(request)
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            self.bearer_tokens.add(authorization.removeprefix("Bearer "))
        form: dict[str, str] = {}
        if request.content_type == "application/x-www-form-urlencoded":
            form = {k: str(v) for k, v in (await request.post()).items()}
            if "code_verifier" in form:
                self.verifiers.append(form["code_verifier"])
        route = f"{request.method} {request.path}"
        echo = next(
            (e for r, e in self.armed.items() if route.startswith(r) and e.remaining > 0), None
        )
        if echo is None:
            return await handler(request)
        echo.remaining -= 1
        self.echoed += 1
        raw = (await request.read()).decode("utf-8", "replace")
        bare = " ".join([*form.values(), authorization.partition(" ")[2]])
        said = f"we got {raw} with Authorization: {authorization}; values: {bare}"
        body: dict[str, Any] = {
            # OAuth's shape and the API's, both carrying the echo.
            "error": "invalid_grant" if echo.status == 400 else "server_error",
            "error_description": said,
            "title": f"Echo {bare}",
            "message": said,
            "details": [{"parameter": name, "message": value} for name, value in form.items()],
            "received": {"form": form, "raw": raw, "authorization": authorization},
        }
        with contextlib.suppress(ValueError):
            body["received"]["json"] = json.loads(raw)
        return web.json_response(body, status=echo.status)


@dataclass
class Calendly:
    driver: SandboxDriver
    state: Sandbox
    hostile: HostileCalendly


@pytest.fixture
async def calendly(
    http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Calendly]:
    """The sandbox in-process, with the hostile middleware outermost and canary tokens."""
    monkeypatch.setattr(
        calendly_sandbox.world,
        "new_secret",
        lambda prefix: f"{prefix}_{MARK}_{secrets.token_urlsafe(48)}",
    )
    hostile = HostileCalendly()
    settings = Settings(
        retry_base=60.0,
        retry_window=86_400.0,
        delivery_time_scale=1e-5,
        access_token_ttl=1800,
        # Many refreshes and exchanges for few users in a few seconds.
        token_requests_per_minute=100,
    )
    app = create_app(SandboxConfig(settings=settings))
    app.middlewares.insert(0, hostile.middleware)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    app[SANDBOX].world.base_url = url
    dummy = OAuthClient(client_id="unused", client_secret="unused", redirect_uris=[])
    try:
        yield Calendly(SandboxDriver(http=http, url=url, client=dummy), app[SANDBOX], hostile)
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------ capturing
@dataclass
class Capture:
    """Everything the service said: log lines and the responses the test received."""

    logs: io.StringIO = field(default_factory=io.StringIO)
    responses: list[str] = field(default_factory=list)

    def seen(self, status: int, headers: Mapping[str, str], body: str) -> None:
        self.responses.append(f"{status}\n{json.dumps(dict(headers))}\n{body}")

    def service_log(self) -> str:
        """The captured lines, less the sandbox server's own (it is Calendly, not us)."""
        lines = []
        for line in self.logs.getvalue().splitlines():
            try:
                logger = str(json.loads(line).get("logger", ""))
            except ValueError:
                logger = ""
            if not logger.startswith(SANDBOX_LOGGERS):
                lines.append(line)
        return "\n".join(lines)


@pytest.fixture(params=["json", "console"])
def log_format(request: pytest.FixtureRequest) -> str:
    """Both renderers: JSON (production) and the console one (a terminal's default)."""
    fmt: str = request.param
    return fmt


@pytest.fixture
def capture(canaries: Canaries, database_url: str, log_format: str) -> Iterator[Capture]:
    """The project's logging, process-wide, into a buffer; restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_structlog = structlog.get_config()
    saved_hook = sys.excepthook
    captured = Capture()
    configure_logging(fmt=log_format, level="DEBUG", stream=captured.logs)
    # As `calendly-connect serve` does at start-up (entrypoints/cli.py).
    environ = service_environment(database_url, "http://127.0.0.1:9", 9, **canaries.environ())
    for value in load_settings(environ).secret_values():
        register_secret(value)
    try:
        yield captured
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_structlog)
        sys.excepthook = saved_hook


@pytest.fixture
def canaries() -> Canaries:
    return Canaries()


@pytest.fixture
async def service(
    calendly: Calendly, database_url: str, canaries: Canaries, capture: Capture
) -> AsyncIterator[RunningService]:
    async with running_service(database_url, calendly.driver.url, **canaries.environ()) as svc:
        yield svc


def pg_dump(database_url: str) -> str:
    import pgserver

    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"
    binary = str(bundled) if bundled.exists() else shutil.which("pg_dump")
    assert binary, "pg_dump is needed (pgserver ships one)"
    done = subprocess.run(
        [binary, "--no-owner", "--dbname", database_url],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    return done.stdout.decode("utf-8", "replace")


# ------------------------------------------------------------------- driving
class Driver:
    """The moves of the test, each response captured."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        service: RunningService,
        calendly: Calendly,
        capture: Capture,
    ) -> None:
        self.http, self.service, self.calendly, self.capture = http, service, calendly, capture
        self.sandbox = calendly.driver

    async def api(self, method: str, path: str, user: str | None, **kw: Any) -> tuple[int, Any]:
        return await call(self.http, self.service, method, path, user, seen=self.capture.seen, **kw)

    async def connect(self, user: str, email: str, *, html: bool = False) -> str:
        """Connect `user` as `email`; the sandbox user's id."""
        await connect(self.http, self.service, user, email, seen=self.capture.seen, html=html)
        return await sandbox_user_id(self.sandbox, email)

    async def callback(self, user: str, email: str) -> int:
        """A connect that ends on the popup page (as a browser gets it); the page's status."""
        async with self.http.post(
            f"{self.service.url}/api/calendly/connect", headers=self.service.auth(user)
        ) as response:
            text = await response.text()
            self.capture.seen(response.status, dict(response.headers), text)
            binding = SimpleCookie(response.headers["Set-Cookie"])["cc_oauth_binding"].value
            started = json.loads(text)
        async with self.http.get(
            f"{started['authorization_url']}&sandbox_login={email}", allow_redirects=False
        ) as response:
            location = response.headers["Location"]
        async with self.http.get(
            location, headers={"Cookie": f"cc_oauth_binding={binding}"}
        ) as response:
            self.capture.seen(response.status, dict(response.headers), await response.text())
            return response.status

    async def book(self, calendly_user: str) -> None:
        booked = await self.sandbox.book(calendly_user, wait=True)
        statuses = [d["attempts"][-1]["status"] for d in booked["deliveries"]]
        assert statuses == [200], statuses

    async def stream(self, user: str) -> None:
        headers = {**self.service.auth(user), "Last-Event-ID": "0"}
        async with self.http.get(f"{self.service.url}/api/live", headers=headers) as response:
            events = EventReader(response)
            text = []
            for _ in range(3):
                event = await events.next()
                text.append(f"{event.event} {event.id} {event.data}")
            self.capture.seen(response.status, dict(response.headers), "\n".join(text))

    async def deliver(self, path: str, body: bytes, key: str) -> None:
        headers = {
            "Content-Type": "application/json",
            "Calendly-Webhook-Signature": sign(body, key),
        }
        async with self.http.post(f"{self.service.url}{path}", data=body, headers=headers) as r:
            self.capture.seen(r.status, dict(r.headers), await r.text())
            assert r.status < 500

    async def worker_round(self) -> int:
        """One claim-and-work round of `calendly-connect worker`, refreshing every token.

        The worker runs with the service's settings but a margin wider than the sandbox's
        token lifetime, so every connection it claims is refreshed.
        """
        settings = msgspec.structs.replace(
            self.service.settings,
            calendly=msgspec.structs.replace(
                self.service.settings.calendly, refresh_margin_seconds=3600
            ),
        )
        container = Container(settings=settings)
        try:
            worker = await build_worker(container, settings)
            return await worker.run_once()
        finally:
            await resolve(container.shutdown_resources())


def forced_message(token: Secret, canaries: Canaries, verifier: str) -> str:
    """What a careless exception might say: credentials in every shape a library prints."""
    return (
        f"request failed: Authorization: Bearer {token.reveal()} with {token!r};"
        f' body {{"access_token": "{token.reveal()}", "code_verifier": "{verifier}"}};'
        f" form refresh_token={token.reveal()}&code_verifier={verifier};"
        f" app secrets {canaries.client_secret} {canaries.signing_key} {canaries.jwt_secret}"
    )


# --------------------------------------------------------------------- the test
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_no_secret_appears_in_logs_responses_or_the_database(
    calendly: Calendly,
    service: RunningService,
    capture: Capture,
    canaries: Canaries,
    database_url: str,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drive = Driver(http, service, calendly, capture)
    hostile, sandbox = calendly.hostile, calendly.driver

    # Connect: a code, a verifier, tokens and a subscription signing key exist now.
    ada = await drive.connect("alice", "ada@example.com")
    bo = await drive.connect("bob", "bo@example.com", html=True)
    assert hostile.verifiers, "the service sends a PKCE verifier"

    # Webhooks: signed with each subscription's own key, and with the app key on the shared URL.
    await drive.book(ada)
    await drive.book(bo)
    host = (await drive.api("GET", "/api/calendly/connection", "alice"))[1]["calendly_user_uri"]
    body = envelope(
        "invitee.created", invitee_payload(host_uri=host, event_id="e1", invitee_id="i1"), host
    )
    await drive.deliver("/webhooks/calendly", body, canaries.signing_key)
    await drive.deliver("/webhooks/calendly", body, "not-the-key")  # 401
    await drive.deliver("/webhooks/calendly", b'{"event": "x"}', canaries.signing_key)  # aside
    await drive.stream("alice")
    await drive.api("GET", "/api/meetings", "alice")

    # An on-demand refresh: Calendly rejects the access token, the service refreshes once.
    await sandbox.control("POST", f"/_sandbox/users/{ada}/expire_tokens", expect=200)
    status, answer = await drive.api("POST", "/api/calendly/reconnect", "alice")
    assert (status, answer["outcome"]) == (200, "reconnected"), answer
    # The worker: its first pass refreshes each token (the margin is wider than their life)
    # and reads the scheduled events.
    assert await drive.worker_round() >= 2

    # Calendly fails, echoing what it was sent: 500 (retried), 429, 401 on the API.
    hostile.arm("GET /users/me", 500)
    await drive.api("POST", "/api/calendly/reconnect", "alice")
    await sandbox.fault("GET /users/me", status=429, reset_seconds=1)
    await drive.api("POST", "/api/calendly/reconnect", "alice")
    hostile.arm("GET /users/me", 401, count=2)
    await drive.api("POST", "/api/calendly/reconnect", "alice")
    # The worker's sync meets an echoing 500 on every attempt.
    hostile.arm("GET /scheduled_events", 500, count=20)
    await drive.worker_round()
    hostile.disarm()

    # A refresh refused with an echo (invalid_grant): alice needs to authorize again, and her
    # connection's last error is shown to her.
    await sandbox.control("POST", f"/_sandbox/users/{ada}/expire_tokens", expect=200)
    hostile.arm("POST /oauth/token", 400)
    status, answer = await drive.api("POST", "/api/calendly/reconnect", "alice")
    assert status == 200, answer
    await drive.api("GET", "/api/calendly/connection", "alice")
    # The code exchange refused with an echo of code, verifier and client credentials.
    hostile.arm("POST /oauth/token", 400)
    assert await drive.callback("alice", "ada@example.com") >= 400
    hostile.arm("POST /oauth/token", 500)
    assert await drive.callback("alice", "ada@example.com") >= 400
    hostile.disarm()
    await drive.connect("alice", "ada@example.com")

    # A third user whose subscription and, later, revoke and unsubscribe fail with echoes.
    hostile.arm("POST /webhook_subscriptions", 400)
    assert await drive.callback("carol", "cy@example.com") == 502
    hostile.arm("POST /oauth/revoke", 500, count=5)
    hostile.arm("DELETE /webhook_subscriptions/", 500)
    await drive.api("DELETE", "/api/calendly/connection", "carol")
    hostile.disarm()

    # Exceptions nobody expected, with secrets in their messages: in a handler, in the worker.
    verifier = hostile.verifiers[-1]

    async def explode(self: AiohttpCalendlyApi, access_token: Secret, **_: Any) -> Any:
        raise RuntimeError(forced_message(access_token, canaries, verifier))

    monkeypatch.setattr(AiohttpCalendlyApi, "current_user", explode)
    status, answer = await drive.api("POST", "/api/calendly/reconnect", "bob")
    assert status == 500, answer
    monkeypatch.setattr(AiohttpCalendlyApi, "list_scheduled_events", explode)
    await drive.worker_round()
    monkeypatch.undo()

    # Requests that fail before any handler: unknown routes, bad and foreign tokens.
    await drive.api("GET", "/api/nothing-here", "alice")
    await drive.api("GET", "/api/meetings", None, headers={"Authorization": "Bearer x.y.z"})
    await drive.api("GET", "/api/meetings?cursor=%%%", "alice")
    for user in ("alice", "bob", "carol"):
        await drive.api("GET", "/api/calendly/connection", user)
    await drive.stream("bob")

    await asyncio.sleep(0.2)  # let the last log lines of background work land
    dump = await asyncio.to_thread(pg_dump, database_url)
    # The dump holds the rows: connections with their encrypted tokens, pending states, events.
    for table in ("calendar_connections", "calendly_oauth_states", "calendly_webhook_events"):
        assert f"COPY public.{table} " in dump, table
    assert "\\x01" in dump  # encrypted tokens (key id inside), as pg_dump shows bytea
    log_text = capture.service_log()

    # The failure paths really ran and were logged (a test that saw nothing proves nothing).
    assert hostile.echoed >= 8, hostile.echoed
    for event in (
        "calendly.error_response",
        "http.unexpected_error",
        "worker.maintenance_failed",
        "http.request",
    ):
        assert event in log_text, f"no {event} line was logged"
    assert "Traceback" in log_text or '"exc_info"' in log_text or '"exception"' in log_text

    secrets_seen = collect_secrets(calendly, canaries)
    haystacks = {
        "the service's log": log_text,
        "the responses": "\n\n".join(capture.responses),
        "the pg_dump": dump,
    }
    for name, haystack in haystacks.items():
        assert haystack, name
        assert_no_canary(name, haystack, secrets_seen)


def collect_secrets(calendly: Calendly, canaries: Canaries) -> dict[str, set[str]]:
    """Every secret value that existed during the run, by kind, in every form it could take."""
    world = calendly.state.world
    found: dict[str, set[str]] = {
        "client secret": text_forms(canaries.client_secret),
        "app signing key": text_forms(canaries.signing_key),
        "JWT secret": text_forms(canaries.jwt_secret),
        "token encryption key": bytes_forms(canaries.encryption_key)
        | {canaries.encryption_key.decode("latin-1")},
    }
    found["client secret"] |= {
        base64.b64encode(f"{client}:{canaries.client_secret}".encode()).decode()
        for client in world.clients
    }
    values: dict[str, set[str]] = {
        "access token": set(world.grants_by_access) | calendly.hostile.bearer_tokens,
        "refresh token": set(world.grants_by_refresh),
        "authorization code": set(world.codes),
        "PKCE verifier": set(calendly.hostile.verifiers),
        "subscription signing key": {
            s.signing_key for s in world.subscriptions.values() if s.signing_key
        },
    }
    for kind, items in values.items():
        assert items, f"the run produced no {kind}"
        found[kind] = set().union(*(text_forms(item) for item in items))
    return found


def assert_no_canary(where: str, haystack: str, canaries: dict[str, set[str]]) -> None:
    for kind, forms in canaries.items():
        for form in forms:
            at = haystack.find(form)
            if at >= 0:
                around = haystack[max(0, at - 120) : at + len(form) + 40].replace(form, "<HERE>")
                pytest.fail(f"a {kind} appears in {where}: ...{around}...")
    if MARK in haystack:
        at = haystack.find(MARK)
        pytest.fail(f"{MARK} appears in {where}: ...{haystack[max(0, at - 120) : at + 60]}...")
    jwt = re.search(rf"{JWT_PREFIX}[A-Za-z0-9_-]{{10,}}", haystack)
    assert jwt is None, f"a bearer JWT appears in {where}"
