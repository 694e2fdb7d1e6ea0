"""Per-request facts shared by the middleware, the error handler and the handlers."""

from __future__ import annotations

from typing import Any, Final

from litestar.types import Scope

REQUEST_ID_KEY: Final = "calendly_connect.request_id"
LOG_FIELDS_KEY: Final = "calendly_connect.log_fields"

LogValue = str | int | bool | None


def _state(scope: Scope) -> dict[str, Any]:
    # Litestar puts a dict there before any middleware runs.
    return scope.setdefault("state", {})


def set_request_id(scope: Scope, request_id: str) -> None:
    state = _state(scope)
    state[REQUEST_ID_KEY] = request_id
    state[LOG_FIELDS_KEY] = {}


def request_id_of(scope: Scope) -> str | None:
    value = _state(scope).get(REQUEST_ID_KEY)
    return value if isinstance(value, str) else None


# Names the request line itself uses (or structlog reserves); annotations never replace them.
_RESERVED: Final = frozenset(
    {"event", "method", "path", "status", "duration_ms", "request_id", "user_id"}
)


def annotate_request(scope: Scope, **fields: LogValue) -> None:
    """Add fields to the request's one log line (outcome, problem type...)."""
    clashing = _RESERVED.intersection(fields)
    if clashing:
        raise ValueError(f"reserved log field names: {sorted(clashing)}")
    _state(scope).setdefault(LOG_FIELDS_KEY, {}).update(fields)


def log_fields_of(scope: Scope) -> dict[str, LogValue]:
    fields = _state(scope).get(LOG_FIELDS_KEY)
    return dict(fields) if isinstance(fields, dict) else {}
