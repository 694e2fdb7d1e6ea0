"""Probes for the orchestrator: alive (the process answers) and ready (the database answers)."""

from __future__ import annotations

import asyncio

import structlog
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from entrypoints.service.http.config import HttpConfig
from entrypoints.service.http.schemas import HealthResponse
from entrypoints.services import Services

log = structlog.get_logger(__name__)


@get("/health/live", operation_id="liveness", tags=["health"])
async def live() -> HealthResponse:
    """Liveness: 200 whenever the process can answer at all."""
    return HealthResponse(status="ok")


@get(
    "/health/ready",
    operation_id="readiness",
    tags=["health"],
    responses={
        503: ResponseSpec(
            data_container=HealthResponse,
            description="The database does not answer",
            generate_examples=False,
        )
    },
)
async def ready(
    services: NamedDependency[Services], http_config: NamedDependency[HttpConfig]
) -> Response[HealthResponse]:
    """Readiness: 200 when the database answers in time, else 503."""
    try:
        async with asyncio.timeout(http_config.readiness_timeout):
            is_ready = await services.database_ready()
    except Exception as exc:  # any failure of the probe means "not ready", never a 500
        log.warning("http.readiness_failed", error_type=type(exc).__name__)
        is_ready = False
    return Response(
        HealthResponse(status="ok" if is_ready else "unavailable"),
        status_code=200 if is_ready else 503,
    )
