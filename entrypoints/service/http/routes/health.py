"""Probes for the orchestrator: alive (the process answers) and ready (database, schema,
live-update listener)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import structlog
from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from entrypoints.service.http.config import HttpConfig
from entrypoints.service.http.context import request_id_of
from entrypoints.service.http.errors import PROBLEM_JSON, PROBLEM_TYPE_PREFIX
from entrypoints.service.http.schemas import FailingCheck, HealthResponse, NotReadyProblem
from entrypoints.services import NotReady, Services

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
            data_container=NotReadyProblem,
            description="Not ready: the database does not answer, it lacks a migration this "
            "code expects, or the live-update listener is not connected (`failing` names each)",
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
    },
)
async def ready(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    http_config: NamedDependency[HttpConfig],
) -> Response[HealthResponse]:
    """Readiness: 200 when the database answers in time with every migration this code
    expects applied and the live-update listener is connected; else 503 naming what is not."""
    problems: list[NotReady]
    try:
        async with asyncio.timeout(http_config.readiness_timeout):
            problems = list(await services.readiness())
    except Exception as exc:  # any failure of the probe means "not ready", never a 500
        log.warning("http.readiness_failed", error_type=type(exc).__name__)
        problems = [NotReady("database", "the database did not answer in time")]
    if not problems:
        return Response(HealthResponse(status="ok"))
    log.warning("http.not_ready", failing=[p.check for p in problems])
    return _not_ready(request, problems)


def _not_ready(
    request: Request[Any, Any, Any], problems: list[NotReady]
) -> Response[HealthResponse]:
    """The 503 (its shape is in the route's `responses`; the annotation names the 200's)."""
    answer = Response(
        NotReadyProblem(
            type=PROBLEM_TYPE_PREFIX + "not-ready",
            title="Not ready",
            status=503,
            detail="; ".join(f"{p.check}: {p.detail}" for p in problems),
            request_id=request_id_of(request.scope),
            failing=tuple(FailingCheck(check=p.check, detail=p.detail) for p in problems),
        ),
        status_code=503,
        media_type=PROBLEM_JSON,
        headers={"Retry-After": "5"},
    )
    return cast("Response[HealthResponse]", answer)
