"""The Litestar application: routes, dependencies, the error table and the request middleware."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Final

from litestar import Litestar, Router
from litestar.config.app import AppConfig
from litestar.config.cors import CORSConfig
from litestar.datastructures import CacheControlHeader
from litestar.di import Provide
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme, Server
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from entrypoints.services import Services

from .auth import JwtAuthenticator, current_principal, current_user, require_api_key
from .config import HttpConfig
from .cursors import MeetingCursors
from .errors import ErrorTable
from .jwks import JwksKeys
from .middleware import MountedUnder, RequestContextMiddleware
from .routes.calendly import CalendlyConnectionController
from .routes.client import js_client, js_client_head, js_client_integrity
from .routes.dev import dev_login
from .routes.health import live, ready
from .routes.live import LiveFastPath, live_updates
from .routes.meetings import list_meetings
from .routes.metrics import metrics
from .routes.oauth import oauth_callback
from .routes.pages import index_page
from .routes.server_api import (
    create_session,
    disconnect,
    erase_user,
    get_connection,
    list_changes,
    list_connections,
)
from .routes.server_api import list_meetings as list_user_meetings
from .routes.webhooks import WebhookFastPath, receive_connection_webhook, receive_webhook
from .sessions import UserSessions

if TYPE_CHECKING:  # imported only where tracing is on (DR-40)
    from opentelemetry.trace import Tracer

STATIC_DIR: Final = Path(__file__).parent / "static"
API_VERSION: Final = "0.1.0"

Lifespan = Callable[[Litestar], AbstractAsyncContextManager[None]]


def _constant(value: object) -> Provide:
    async def provide() -> object:
        return value

    return Provide(provide, use_cache=True)


def _authenticator(config: HttpConfig, sessions: UserSessions) -> JwtAuthenticator:
    jwks = JwksKeys(config.jwt_jwks_urls) if config.jwt_jwks_urls else None
    return JwtAuthenticator(
        config.jwt_secrets,
        config.jwt_audience,
        config.jwt_issuer,
        jwks=jwks,
        sessions=sessions,
        leeway_seconds=config.jwt_leeway_seconds,
        user_claim=config.jwt_user_claim,
    )


def _cursors(config: HttpConfig) -> MeetingCursors:
    if config.cursor_key is not None:
        return MeetingCursors(config.cursor_key)
    return MeetingCursors.derived_from(config.jwt_secrets[0])


def _openapi(config: HttpConfig) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Calendly Connect",
        version=API_VERSION,
        description="Connect app users' Calendly accounts; receive and list their meetings.",
        path="/schema",
        # Handler docstrings are the operations' descriptions.
        use_handler_docstrings=True,
        # JSON only: the HTML viewers need inline and third-party scripts, which our
        # Content-Security-Policy forbids.
        render_plugins=[JsonRenderPlugin()],
        # The paths below are relative to the prefix the service is mounted under.
        servers=[Server(url=config.root_path or "/")],
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    bearer_format="JWT",
                    description="The host app's token for its user: HS256 under JWT_SECRET or "
                    "signed by a key in JWT_JWKS_URL; JWT_USER_CLAIM (default `sub`) names "
                    "the user. A user session from `POST /v1/users/{user_id}/sessions` works "
                    "the same. API keys are refused here.",
                ),
                "apiKey": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    bearer_format="ccsk_<base64url>",
                    description="The server API's key, for the host's back end only: "
                    "`Authorization: Bearer ccsk_...` from `calendly-connect api-keys create`. "
                    "`read` keys list and read; `write` keys also disconnect, erase and "
                    "open user sessions (403 otherwise). User tokens are refused here.",
                ),
            }
        ),
    )


def _fix_default_options_handlers(app: Litestar) -> None:
    """Make the automatic OPTIONS answer list every method of its path.

    Litestar 2 builds it when the first handler of a path is registered and keeps it when more
    handlers join the path, so `OPTIONS /api/calendly/connection` answered `Allow: DELETE,
    OPTIONS` without GET (litestar-org/litestar#4169, fixed only in Litestar 3). Each default
    handler gets the function its final route would have made.
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or "OPTIONS" not in route.route_handler_map:
            continue
        handler, _ = route.route_handler_map["OPTIONS"]
        if handler.handler_name == "options_handler":  # Litestar's own, not one of ours
            handler._fn = route.create_options_handler(route.path).fn


class _App(Litestar):
    """Litestar, less its look for OpenTelemetry's middleware at start-up: that imports
    `opentelemetry` wherever it is installed, tracing on or off, and the service never adds
    that middleware (it has its own server spans, tracing.py). Off, tracing costs nothing,
    not even an import (DR-40; tests/unit/test_tracing.py checks)."""

    @staticmethod
    def _patch_opentelemetry_middleware(config: AppConfig) -> AppConfig:
        return config


# How long a browser may reuse a preflight's answer (the most Chromium honours is 2 hours).
PREFLIGHT_MAX_AGE: Final = 7200


def cors(config: HttpConfig) -> CORSConfig:
    """A front end on another origin may call the API and open the live stream.

    Only the exact origins of APP_ORIGINS (never a wildcard); the API authenticates with the
    bearer token, not cookies, so no credentials mode. Calendly's deliveries send no Origin
    and are unaffected.
    """
    return CORSConfig(
        allow_origins=list(config.app_origins),
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        allow_credentials=False,
        expose_headers=["X-Request-Id", "Retry-After"],
        max_age=PREFLIGHT_MAX_AGE,
    )


def create_app(
    services: Services,
    config: HttpConfig,
    *,
    lifespan: Sequence[Lifespan] = (),
    tracer: Tracer | None = None,
    fast_paths: bool = True,
) -> Litestar:
    """The HTTP app over `services`; `lifespan` lets the composition root start its resources.

    With a `tracer` (tracing on, DR-40) every request gets a server span; without one nothing
    of OpenTelemetry is imported or wrapped. `fast_paths=False` leaves every delivery and
    every live stream to Litestar (the tests compare both ways).
    """
    errors = ErrorTable(infrastructure=config.infrastructure_errors)
    sessions = UserSessions(config.session_keys)
    auth = _authenticator(config, sessions)
    cors_config = cors(config)
    cursors = _cursors(config)
    handlers: list[ControllerRouterHandler] = [
        live,
        ready,
        # The app's own API: every route here needs a signed-in user.
        Router(
            path="/",
            route_handlers=[CalendlyConnectionController, list_meetings, live_updates],
            dependencies={
                "principal": Provide(current_principal),
                "user_id": Provide(current_user),
            },
            security=[{"bearer": []}],
        ),
        oauth_callback,
        js_client,
        js_client_head,
        js_client_integrity,
        # The server API, for the host's back end: API keys only (DR-30), with the change
        # feed (DR-31).
        Router(
            path="/v1",
            route_handlers=[
                list_connections,
                get_connection,
                disconnect,
                list_user_meetings,
                create_session,
                erase_user,
                list_changes,
            ],
            guards=[require_api_key(services.authenticate_api_key)],
            security=[{"apiKey": []}],
        ),
        Router(
            path="/webhooks/calendly",
            route_handlers=[receive_webhook, receive_connection_webhook],
            tags=["webhooks"],
            request_max_body_size=config.max_webhook_body,
        ),
        create_static_files_router(
            path="/static",
            directories=[STATIC_DIR],
            name="static",
            # Revalidate every time: a deploy must never leave pages running stale modules.
            cache_control=CacheControlHeader(no_cache=True),
        ),
        index_page,
    ]
    if config.dev_login_enabled:
        handlers.append(dev_login)
    if config.metrics_token is not None and services.metrics is not None:
        handlers.append(metrics)
    app = _App(
        route_handlers=handlers,
        dependencies={
            "services": _constant(services),
            "http_config": _constant(config),
            "auth": _constant(auth),
            "errors": _constant(errors),
            "cursors": _constant(cursors),
            "connection_cursors": _constant(cursors.derived("connections")),
            "sessions": _constant(sessions),
        },
        exception_handlers={Exception: errors.handler()},
        openapi_config=_openapi(config),
        request_max_body_size=config.max_api_body,
        lifespan=list(lifespan),
        cors_config=cors_config,
        # Our own logging (structlog, one line per request) replaces Litestar's.
        logging_config=None,
        debug=False,
    )
    _fix_default_options_handlers(app)
    # Outermost, around Litestar's router: 404s and 405s get a request id and a log line too;
    # outside that, the prefix comes off, so all of it sees the service's own paths.
    handler = app.asgi_handler
    if tracer is None and fast_paths:
        # Calendly's plain deliveries and the open live streams skip Litestar (issue 17);
        # with tracing on they keep Litestar's routes, which the server spans name.
        handler = WebhookFastPath(handler, services, config, errors)
        handler = LiveFastPath(handler, services, auth, cors_config)
    if tracer is not None:
        from .tracing import ServerSpans

        # Inside the request context (and under the prefix): the span sees the route's template.
        handler = ServerSpans(handler, tracer)
    app.asgi_handler = MountedUnder(RequestContextMiddleware(handler), config.root_path)
    return app
