"""Assemble the sandbox as an aiohttp app, serve it, and run it from the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from . import api, control, oauth, ui
from .config import OAuthClient, SandboxConfig, Settings
from .delivery import Deliverer
from .errors import ApiError, OAuthError
from .limits import Fault
from .model import Plan, Role
from .persistence import keep_saving, restore
from .state import RATE_HEADERS, SANDBOX, SANDBOX_USER, Call, Sandbox
from .world import World

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 1024 * 1024
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def route_name(request: web.Request) -> str:
    """`"METHOD /template"` for a matched route, `"METHOD /path"` otherwise."""
    resource = request.match_info.route.resource
    template = resource.canonical if resource is not None else request.path
    return f"{request.method} {template}"


def as_response(exc: web.HTTPException) -> web.Response:
    # Redirects and HTML errors pass through the middleware as ordinary responses, so that
    # they are logged and carry headers like any other answer.
    headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-length"}
    return web.Response(status=exc.status, body=exc.body, headers=headers)


@web.middleware
async def traffic(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Faults, authentication, rate limits, error shapes and the call log for every call."""
    sandbox = request.app[SANDBOX]
    if request.path.startswith("/_sandbox/"):
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
    route = route_name(request)
    is_api = not request.path.startswith("/oauth/")
    matched = request.match_info.route.resource is not None
    extra_headers: dict[str, str] = {}
    try:
        fault = sandbox.faults.take(route) if matched else None
        if fault is not None:
            extra_headers = await apply_fault(request, fault)
        if is_api and matched:
            extra_headers = authenticate(request, sandbox)
        elif is_api:
            # An unknown path or method still answers 404/405, but like every API response
            # it carries the X-RateLimit-* headers (and counts against the caller's limit).
            with contextlib.suppress(ApiError):
                authenticate(request, sandbox)
        response = await handler(request)
    except (ApiError, OAuthError) as exc:
        response = exc.response()
        if isinstance(exc, ApiError) and exc.status == 429 and not extra_headers:
            extra_headers = request.get(RATE_HEADERS, {})
    except web.HTTPException as exc:
        if is_api and exc.status in (404, 405):
            response = ApiError(exc.status).response()
        else:
            response = as_response(exc)
    if isinstance(response, web.Response):
        response.headers.update(extra_headers or request.get(RATE_HEADERS, {}))
    sandbox.calls.append(
        Call(
            seq=len(sandbox.calls) + 1,
            at=sandbox.world.clock.now(),
            method=request.method,
            path=request.path_qs,
            route=route,
            status=response.status,
            user_id=request.get(SANDBOX_USER),
        )
    )
    return response


async def apply_fault(request: web.Request, fault: Fault) -> dict[str, str]:
    if fault.latency_ms > 0:
        await asyncio.sleep(fault.latency_ms / 1000)
    if fault.reset_connection:
        if request.transport is not None:
            request.transport.abort()
        raise ApiError(500, "connection reset by the sandbox")
    if fault.status is None:
        return {}
    headers: dict[str, str] = {}
    if fault.status == 429:
        headers = {
            "X-RateLimit-Limit": "500",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(fault.reset_seconds),
        }
        request[RATE_HEADERS] = headers
    if fault.body is not None:
        raise ApiError(fault.status, raw_body=fault.body)
    if request.path.startswith("/oauth/"):
        raise OAuthError(fault.status, "server_error", "Injected failure.")
    raise ApiError(fault.status)


def authenticate(request: web.Request, sandbox: Sandbox) -> dict[str, str]:
    """Resolve the bearer token to a user and count the call against their rate limit."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    try:
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401)
        grant, user = sandbox.world.bearer_user(token.strip())
    except ApiError:
        # Unauthenticated calls are counted per client address, so they carry the headers too.
        settings = sandbox.world.settings
        _, remaining, reset = sandbox.limiter.hit(
            f"anonymous:{request.remote}",
            settings.rate_limit_paid,
            settings.rate_limit_window,
            sandbox.world.clock.now(),
        )
        request[RATE_HEADERS] = {
            "X-RateLimit-Limit": str(settings.rate_limit_paid),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(reset),
        }
        raise
    request[SANDBOX_USER] = user.id
    request[api.CALLER] = user
    request[api.CLIENT_ID] = grant.client_id
    settings = sandbox.world.settings
    limit = settings.rate_limit_paid if user.paid else settings.rate_limit_free
    allowed, remaining, reset = sandbox.limiter.hit(
        user.id, limit, settings.rate_limit_window, sandbox.world.clock.now()
    )
    headers = {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset),
    }
    request[RATE_HEADERS] = headers
    if not allowed:
        raise ApiError(429)
    return headers


def create_app(config: SandboxConfig | None = None) -> web.Application:
    """The sandbox as an aiohttp application (state lives in `app[SANDBOX]`)."""
    config = config or SandboxConfig()
    world = World(config)
    sandbox = Sandbox(world=world, deliverer=Deliverer(world))
    app = web.Application(middlewares=[traffic], client_max_size=MAX_BODY)
    app[SANDBOX] = sandbox
    app.add_routes(oauth.routes)
    app.add_routes(api.routes)
    app.add_routes(control.routes)
    app.add_routes(ui.routes)

    async def start_deliverer(_: web.Application) -> None:
        await sandbox.deliverer.start()

    async def stop_deliverer(_: web.Application) -> None:
        await sandbox.deliverer.close()

    app.on_startup.append(start_deliverer)
    app.on_cleanup.append(stop_deliverer)
    return app


@dataclass
class RunningSandbox:
    """A sandbox listening on a real port."""

    url: str
    app: web.Application

    @property
    def state(self) -> Sandbox:
        return self.app[SANDBOX]


@contextlib.asynccontextmanager
async def serve(
    config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSandbox]:
    """Serve a sandbox on `host:port` (0 picks a free port) until the block ends."""
    config = config or SandboxConfig()
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound_port = sockets[0].getsockname()[1] if sockets else port
    url = f"http://{host}:{bound_port}"
    if config.base_url is None:
        app[SANDBOX].world.base_url = url
    try:
        yield RunningSandbox(url=url, app=app)
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------ CLI
class PreloadUser(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    email: str
    plan: Plan = "standard"
    organization: str | None = None
    role: Role | None = None
    timezone: str = "Europe/Berlin"
    id: str | None = None


class PreloadOrganization(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str
    name: str


class Preload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    clients: list[OAuthClient] = msgspec.field(default_factory=list)
    organizations: list[PreloadOrganization] = msgspec.field(default_factory=list)
    users: list[PreloadUser] = msgspec.field(default_factory=list)
    settings: Settings | None = None


def apply_preload(app: web.Application, preload: Preload) -> None:
    world = app[SANDBOX].world
    for client in preload.clients:
        world.clients[client.client_id] = client
    for org in preload.organizations:
        world.create_organization(org.name, org_id=org.id)
    for user in preload.users:
        world.create_user(
            name=user.name,
            email=user.email,
            plan=user.plan,
            organization_id=user.organization,
            role=user.role,
            timezone=user.timezone,
            user_id=user.id,
        )
    if preload.settings is not None:
        world.settings = preload.settings


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 letting the system pick a free one."""
    if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", text) or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port: use a whole number from 0 to 65535 (0 picks a free one)"
        )
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="calendly-connect sandbox",
        description="A stateful Calendly look-alike (OAuth, API, webhooks) for local use.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=port_number, default=8765, help="port to listen on")
    parser.add_argument("--base-url", help="base of every URI in responses (default: own URL)")
    parser.add_argument(
        "--client-id",
        default=env("CALENDLY_OAUTH_CLIENT_ID") or "sandbox-client",
        help="OAuth client id to register (env CALENDLY_OAUTH_CLIENT_ID)",
    )
    parser.add_argument(
        "--client-secret",
        default=env("CALENDLY_OAUTH_CLIENT_SECRET"),
        help="its secret (env CALENDLY_OAUTH_CLIENT_SECRET; default: random, printed)",
    )
    parser.add_argument(
        "--signing-key",
        default=env("CALENDLY_WEBHOOK_SIGNING_KEY"),
        help="app-level webhook signing key (env CALENDLY_WEBHOOK_SIGNING_KEY; default: random)",
    )
    parser.add_argument(
        "--redirect-uri",
        action="append",
        help="a registered redirect URI (repeatable; default: the service's local callback)",
    )
    parser.add_argument("--preload", type=Path, help="JSON file with clients/users to create")
    parser.add_argument(
        "--state-file",
        type=Path,
        help="keep users, tokens, subscriptions and meetings in this file across restarts",
    )
    parser.add_argument(
        "--access-token-ttl", type=int, default=7200, help="access token lifetime in seconds"
    )
    return parser


@contextlib.contextmanager
def _stopped_by_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` inside the block, the handlers from before come back after.

    Taken back while the loop still runs: closing, asyncio shuts its wake-up pipe before it
    removes its handlers, and a second Ctrl-C in between printed a traceback ("Bad file
    descriptor"). The core has the same helper (entrypoints/service/event_loop.py); the
    sandbox imports nothing from the core, so it keeps its own.
    """
    loop = asyncio.get_running_loop()
    handled: dict[signal.Signals, Any] = {}
    for sig in STOP_SIGNALS:
        before = signal.getsignal(sig)
        loop.add_signal_handler(sig, stop.set)
        handled[sig] = before
    try:
        yield
    finally:
        for sig, before in handled.items():
            loop.remove_signal_handler(sig)
            if before is not None:
                signal.signal(sig, before)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings(access_token_ttl=args.access_token_ttl)
    preload = None
    if args.preload is not None:
        try:
            preload = msgspec.json.decode(args.preload.read_bytes(), type=Preload)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            print(f"error: cannot preload {args.preload}: {exc}", file=sys.stderr)
            return 2
    if args.access_token_ttl <= 0:
        print("error: --access-token-ttl must be positive", file=sys.stderr)
        return 2
    secret_given = args.client_secret is not None
    client = OAuthClient(
        client_id=args.client_id,
        client_secret=args.client_secret or secrets.token_urlsafe(32),
        redirect_uris=args.redirect_uri
        or [
            "http://localhost:8000/oauth/calendly/callback",
            "http://127.0.0.1:8000/oauth/calendly/callback",
        ],
        webhook_signing_key=args.signing_key or secrets.token_urlsafe(32),
    )
    config = SandboxConfig(base_url=args.base_url, clients=[client], settings=settings)

    async def run() -> int:
        stop = asyncio.Event()
        with _stopped_by_signals(stop):  # the clean-up below included
            return await _serve_until(stop)

    async def _serve_until(stop: asyncio.Event) -> int:
        async with serve(config, args.host, args.port) as running:
            if preload is not None:
                try:
                    apply_preload(running.app, preload)
                except ApiError as exc:
                    print(f"error: cannot preload {args.preload}: {exc.message}", file=sys.stderr)
                    return 2
            saver = None
            if args.state_file is not None:
                world = running.state.world
                if args.state_file.exists():
                    try:
                        restore(world, args.state_file.read_bytes())
                    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                        print(f"error: cannot read {args.state_file}: {exc}", file=sys.stderr)
                        return 2
                saver = asyncio.create_task(keep_saving(world, args.state_file))
            print(f"Calendly sandbox listening on {running.url}")
            print(f"  OAuth client id:  {client.client_id}")
            if not secret_given:
                # Generated for this run only, so printing it leaks nothing real.
                print(f"  client secret:    {client.client_secret}  (generated for this run)")
                print(f"  signing key:      {client.webhook_signing_key}  (generated)")
            print(f"  redirect URIs:    {', '.join(client.redirect_uris)}")
            print(f"  browser UI:       {running.url}/_sandbox/")
            print(f"  control API:      {running.url}/_sandbox/routes   (Ctrl-C stops)")
            sys.stdout.flush()
            await stop.wait()
            if saver is not None:
                saver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await saver
        return 0

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:  # a Ctrl-C after the first, once the handlers are taken back
        return 0
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
