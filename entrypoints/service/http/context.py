"""Per-request facts shared by the middleware, the error handler and the handlers."""

from __future__ import annotations

from typing import Any, Final

from litestar.types import Scope

REQUEST_ID_KEY: Final = "calendly_connect.request_id"
LOG_FIELDS_KEY: Final = "calendly_connect.log_fields"
UNLOGGED_KEY: Final = "calendly_connect.unlogged"

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


def leave_unlogged(scope: Scope) -> None:
    """Write no request line for this request, should it succeed (an error is always logged)."""
    _state(scope)[UNLOGGED_KEY] = True


def unlogged(scope: Scope) -> bool:
    return _state(scope).get(UNLOGGED_KEY) is True


class OneIn:
    """A per-process sample: yes for the first of every `n` calls (1: always)."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("a sample takes one in at least 1")
        self.n = n
        self._seen = 0

    def take(self) -> bool:
        taken = self._seen % self.n == 0
        self._seen += 1
        return taken
