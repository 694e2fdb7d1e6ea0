"""OpenTelemetry traces (DR-40): set up only when an exporter is configured, else not at all.

`start_tracing` returns None when TracingSettings are off, and imports no OpenTelemetry module
then (every import is inside it): a process without tracing neither loads the packages nor
wraps anything. On, it builds a TracerProvider with a BatchSpanProcessor in front of the
OTLP/HTTP exporter, and hands out what the processes wrap with it: the tracer for the HTTP
app's server spans and `CalendlySpans` for the Calendly adapter's client spans. No global
provider is installed: only what this module hands a tracer to makes spans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import structlog

from entrypoints.settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

    from adapters.tracing import CalendlySpans

log = structlog.get_logger(__name__)

SERVICE_NAME: Final = "calendly-connect"
WORKER_SERVICE_NAME: Final = "calendly-connect-worker"
INSTALL_HINT: Final = "pip install 'calendly-connect[tracing]'"
# How long a stopping process waits for its last spans to reach the collector.
SHUTDOWN_FLUSH_MILLISECONDS: Final = 5_000


class TracingUnavailable(Exception):
    """Tracing is configured, but OpenTelemetry's packages are not installed."""


@dataclass(frozen=True)
class Tracing:
    """A process's tracing, on: the provider (flushed and shut down at stop) and its tracers."""

    provider: TracerProvider
    tracer: Tracer
    calendly_spans: CalendlySpans

    def flush(self) -> bool:
        return self.provider.force_flush(SHUTDOWN_FLUSH_MILLISECONDS)

    def shutdown(self) -> None:
        """Send what is batched, then stop the exporter (never raises: tracing is best effort)."""
        try:
            self.provider.force_flush(SHUTDOWN_FLUSH_MILLISECONDS)
            self.provider.shutdown()
        except Exception as exc:
            log.warning("tracing.shutdown_failed", error=type(exc).__name__)


def start_tracing(
    settings: TracingSettings,
    *,
    default_service_name: str = SERVICE_NAME,
    exporter: SpanExporter | None = None,
) -> Tracing | None:
    """This process's tracing, or None when it is off (then nothing is imported).

    `exporter` replaces the OTLP/HTTP exporter: the tests' seam (an in-memory exporter).
    Raises TracingUnavailable when tracing is on and the packages are missing.
    """
    if not settings.enabled and exporter is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from adapters.tracing import CalendlySpans

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(
                endpoint=settings.endpoint,
                headers={name: value.reveal() for name, value in settings.headers} or None,
            )
    except ImportError as exc:
        raise TracingUnavailable(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set (tracing is on), but OpenTelemetry's packages "
            f"are not installed ({exc.name or exc}): {INSTALL_HINT}, or unset the endpoint "
            "(or set OTEL_SDK_DISABLED=true)"
        ) from exc
    name = settings.service_name or default_service_name
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES; the provider reads OTEL_TRACES_SAMPLER.
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("calendly_connect")
    log.info("tracing.started", service_name=name, endpoint=settings.endpoint)
    return Tracing(provider=provider, tracer=tracer, calendly_spans=CalendlySpans(tracer))
