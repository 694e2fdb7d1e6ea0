"""A SERVER span per HTTP request (DR-40), when tracing is on; app.py imports this only then.

Our own small ASGI layer rather than OpenTelemetry's ASGI middleware (which Litestar's plugin
wraps): that one names spans after the raw path and records the path, the query string, the
client's address and the user agent, and this service's paths hold capabilities (a
connection's webhook token) and user ids. Here a span has only what is listed below: the
method, the scheme, the route template (`/webhooks/calendly/{token:str}`, never the values),
the status and, for a failure, the error's type. A `traceparent` sent by the caller is
continued (W3C Trace Context).
"""

from __future__ import annotations

from typing import Any, Final

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

METHOD: Final = "http.request.method"
SCHEME: Final = "url.scheme"
ROUTE: Final = "http.route"
STATUS_CODE: Final = "http.response.status_code"
ERROR_TYPE: Final = "error.type"
_KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
# The request headers a caller's trace context travels in (nothing else is read).
_PROPAGATION_HEADERS: Final = frozenset({b"traceparent", b"tracestate"})


def _carrier(scope: Scope) -> dict[str, str]:
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope.get("headers", ())
        if name.lower() in _PROPAGATION_HEADERS
    }


class ServerSpans:
    """Wraps Litestar's router: it fills `path_template` in the scope while routing, which
    names the span once the request is answered."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self._tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        await self._http(scope, receive, send)

    async def _http(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        method = scope["method"] if scope["method"] in _KNOWN_METHODS else "_OTHER"
        status: int | None = None

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # Calendly's deliveries come from outside: a `traceparent` there is anyone's, and
        # continuing it would let them choose trace ids and force sampling. Each starts its own.
        public = "/webhooks/" in scope.get("path", "") + "/"
        with self._tracer.start_as_current_span(
            method,
            context=None if public else propagate.extract(_carrier(scope)),
            kind=SpanKind.SERVER,
            attributes={METHOD: method, SCHEME: scope.get("scheme", "http")},
            record_exception=False,  # an exception's text may quote a path or a value
            set_status_on_exception=False,
        ) as span:
            try:
                await self.app(scope, receive, sending)
            except BaseException as exc:
                span.set_attribute(ERROR_TYPE, type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR))
                raise
            finally:
                template: Any = scope.get("path_template")
                if isinstance(template, str) and template:
                    span.set_attribute(ROUTE, template)
                    span.update_name(f"{method} {template}")
                if status is not None:
                    span.set_attribute(STATUS_CODE, status)
                    if status >= 500:
                        span.set_attribute(ERROR_TYPE, str(status))
                        span.set_status(Status(StatusCode.ERROR))
