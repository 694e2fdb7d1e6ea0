"""`/metrics`: Prometheus's text, for a scraper holding METRICS_TOKEN only (DR-39)."""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency

from adapters.prometheus import CONTENT_TYPE
from domain.errors import NotAuthenticated
from entrypoints.service.http.config import HttpConfig
from entrypoints.service.http.errors import problem_specs
from entrypoints.services import Services


def _bearer(request: Request[Any, Any, Any]) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


@get(
    "/metrics",
    operation_id="metrics",
    tags=["operations"],
    responses=problem_specs(401),
    # Operational, and there only when METRICS_ENABLED: not part of the API's document.
    include_in_schema=False,
)
async def metrics(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    http_config: NamedDependency[HttpConfig],
) -> Response[bytes]:
    """The service's metrics in Prometheus's text format, summed over its processes.

    `Authorization: Bearer <METRICS_TOKEN>` is required (401 otherwise).
    """
    expected = http_config.metrics_token
    exporter = services.metrics
    given = _bearer(request)
    if (
        expected is None
        or exporter is None
        or not given
        or not hmac.compare_digest(given.encode(), expected.reveal().encode())
    ):
        raise NotAuthenticated("Send the metrics token: Authorization: Bearer <METRICS_TOKEN>.")
    return Response(
        await exporter.render(),
        media_type=CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )
