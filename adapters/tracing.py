"""Client spans for the calls to Calendly (DR-40), when tracing is on.

This module imports OpenTelemetry, so nothing imports it unless tracing is configured: the
entrypoint builds `CalendlySpans` inside its tracing set-up and hands it to the Calendly
adapter, whose transport knows the type only for type checking. A span is one attempt, named
`{method} {route template}` (`GET /scheduled_events/{uuid}/invitees`), with the method, the
template, Calendly's host, the answer's status or the error's type and the resend count: never
a URI, an id, a query string, a header or a body.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from adapters.prometheus import calendly_route

# OpenTelemetry's HTTP client conventions (stable names).
METHOD: Final = "http.request.method"
URL_TEMPLATE: Final = "url.template"
SERVER_ADDRESS: Final = "server.address"
STATUS_CODE: Final = "http.response.status_code"
ERROR_TYPE: Final = "error.type"
RESEND_COUNT: Final = "http.request.resend_count"


class CalendlySpans:
    """Starts one CLIENT span per request sent to Calendly."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def start(self, method: str, base: str, path: str, resend_count: int) -> CalendlyCallSpan:
        route = calendly_route(path)
        attributes: dict[str, str | int] = {
            METHOD: method,
            URL_TEMPLATE: route,
            SERVER_ADDRESS: urlsplit(base).hostname or "",
        }
        if resend_count:
            attributes[RESEND_COUNT] = resend_count
        span = self._tracer.start_span(
            f"{method} {route}", kind=SpanKind.CLIENT, attributes=attributes
        )
        return CalendlyCallSpan(span)


class CalendlyCallSpan:
    """One attempt's span: ended with the answer's status, or with the error's type."""

    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def answered(self, status: int) -> None:
        self._span.set_attribute(STATUS_CODE, status)
        if status >= 400:
            self._span.set_attribute(ERROR_TYPE, str(status))
            self._span.set_status(Status(StatusCode.ERROR))
        self._span.end()

    def failed(self, problem: str) -> None:
        """No answer: the exception's type only (its text may quote a URL)."""
        self._span.set_attribute(ERROR_TYPE, problem)
        self._span.set_status(Status(StatusCode.ERROR))
        self._span.end()
