"""One table from errors to HTTP: status, problem type and a detail safe to show anyone."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import Scope

from domain.errors import (
    AccountAlreadyConnected,
    AuthorizationDenied,
    AuthorizationStateInvalid,
    CalendlyError,
    CalendlyUnavailable,
    ConcurrentUpdate,
    ConnectionNotFound,
    CursorExpired,
    InsufficientScope,
    InvalidSignature,
    NotAuthenticated,
    RateLimited,
    ReauthorizationRequired,
    StorageUnavailable,
    StoredSecretUnreadable,
    UnusablePayload,
)

from .context import annotate_request, request_id_of
from .schemas import FieldError, Problem

PROBLEM_JSON: Final = "application/problem+json"
PROBLEM_TYPE_PREFIX: Final = "urn:calendly-connect:problem:"
STORAGE_RETRY_AFTER: Final = 5
_OAUTH_ERROR_CODE = re.compile(r"[a-z_]{1,64}")

log = structlog.get_logger(__name__)


def _said(exc: Exception) -> str:
    """The exception's own message: domain errors are written to be read by the user."""
    return str(exc)


def _fixed(text: str) -> Callable[[Exception], str]:
    return lambda _: text


def _denied(exc: Exception) -> str:
    # Only a well-formed OAuth error code is echoed; the description is attacker-controlled.
    error = exc.error if isinstance(exc, AuthorizationDenied) else ""
    code = error if _OAUTH_ERROR_CODE.fullmatch(error) else "unknown_error"
    return f"Calendly did not authorize the connection ({code}). Start connecting again."


def _rate_limit_retry(exc: Exception) -> int | None:
    return max(1, math.ceil(exc.retry_after)) if isinstance(exc, RateLimited) else None


@dataclass(frozen=True)
class ProblemKind:
    """How one kind of error is answered."""

    status: int
    slug: str
    title: str
    detail: Callable[[Exception], str] = _said
    retry_after: Callable[[Exception], int | None] = lambda _: None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.slug


_STORAGE_DOWN = ProblemKind(
    503,
    "storage-unavailable",
    "Service temporarily unavailable",
    _fixed("The service cannot reach its database right now; retry shortly."),
    lambda _: STORAGE_RETRY_AFTER,
)

# A database sealed with keys this deployment lacks: the operator's to fix, said as such.
_UNREADABLE = ProblemKind(
    500,
    "stored-credentials-unreadable",
    "Stored credentials cannot be decrypted",
    _fixed(
        "The Calendly credentials stored for this user cannot be decrypted with the keys this "
        "service is configured with (TOKEN_ENCRYPTION_KEY). The operator must "
        + StoredSecretUnreadable.FIX
        + "."
    ),
)

# Most specific first: the first matching row answers.
ERROR_TABLE: Final[tuple[tuple[type[Exception], ProblemKind], ...]] = (
    (
        NotAuthenticated,
        ProblemKind(
            401,
            "not-authenticated",
            "Not authenticated",
            headers={"WWW-Authenticate": 'Bearer realm="calendly-connect"'},
        ),
    ),
    (InsufficientScope, ProblemKind(403, "insufficient-scope", "API key scope too narrow")),
    (
        ConnectionNotFound,
        ProblemKind(
            404,
            "connection-not-found",
            "No Calendly connection",
            _fixed("This user has not connected a Calendly account."),
        ),
    ),
    (CursorExpired, ProblemKind(410, "cursor-expired", "Cursor expired")),
    (
        AuthorizationStateInvalid,
        ProblemKind(400, "authorization-state-invalid", "Invalid authorization request"),
    ),
    (AuthorizationDenied, ProblemKind(400, "authorization-denied", "Access not granted", _denied)),
    (
        AccountAlreadyConnected,
        ProblemKind(409, "account-already-connected", "Calendly account already connected"),
    ),
    (
        ConcurrentUpdate,
        ProblemKind(
            409,
            "concurrent-update",
            "Changed meanwhile",
            _fixed("The connection was changed by another request; try again."),
        ),
    ),
    (
        ReauthorizationRequired,
        ProblemKind(409, "reauthorization-required", "Calendly needs to be authorized again"),
    ),
    (InvalidSignature, ProblemKind(401, "invalid-signature", "Invalid webhook signature")),
    (UnusablePayload, ProblemKind(400, "unusable-payload", "Unusable payload")),
    (
        RateLimited,
        ProblemKind(
            503,
            "calendly-rate-limited",
            "Calendly rate limit reached",
            _fixed("Calendly asked us to slow down; retry after the indicated time."),
            _rate_limit_retry,
        ),
    ),
    (
        CalendlyUnavailable,
        ProblemKind(
            502,
            "calendly-unavailable",
            "Calendly unavailable",
            _fixed("Calendly could not be reached or failed; try again later."),
        ),
    ),
    (
        CalendlyError,
        ProblemKind(
            502,
            "calendly-error",
            "Calendly refused the request",
            _fixed("Calendly refused the request; try again or reconnect Calendly."),
        ),
    ),
    (StorageUnavailable, _STORAGE_DOWN),
    (StoredSecretUnreadable, _UNREADABLE),
)

_UNEXPECTED = ProblemKind(
    500,
    "internal-error",
    "Internal server error",
    _fixed("Something went wrong on our side. Quote the request id when reporting it."),
)


@dataclass(frozen=True)
class Answer:
    """A problem and the headers that go with it."""

    problem: Problem
    headers: dict[str, str]
    kind: ProblemKind


def _answer(kind: ProblemKind, exc: Exception, request_id: str | None) -> Answer:
    headers = dict(kind.headers)
    retry_after = kind.retry_after(exc)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    problem = Problem(
        type=kind.type,
        title=kind.title,
        status=kind.status,
        detail=kind.detail(exc),
        request_id=request_id,
    )
    return Answer(problem=problem, headers=headers, kind=kind)


def _field_errors(extra: object) -> tuple[FieldError, ...]:
    if not isinstance(extra, list):
        return ()
    errors = []
    for item in extra:
        if isinstance(item, Mapping):
            key, source = item.get("key"), item.get("source")
            errors.append(
                FieldError(
                    parameter=key if isinstance(key, str) else None,
                    source=source if isinstance(source, str) else None,
                    message=str(item.get("message", "invalid value")),
                )
            )
    return tuple(errors)


def _validation_answer(exc: ValidationException, request_id: str | None) -> Answer:
    errors = _field_errors(exc.extra)
    named = [e for e in errors if e.parameter]
    if named:
        detail = "; ".join(
            f"invalid {e.source or 'request'} parameter '{e.parameter}': {e.message}" for e in named
        )
        detail = detail[0].upper() + detail[1:]
    elif errors:
        detail = f"Invalid request: {errors[0].message}"
    else:
        # Litestar's own text names the URL with its query string, which may carry codes.
        detail = "The request could not be read."
    kind = ProblemKind(400, "invalid-request", "Invalid request")
    problem = Problem(
        type=kind.type,
        title=kind.title,
        status=400,
        detail=detail,
        request_id=request_id,
        errors=errors or None,
    )
    return Answer(problem=problem, headers={}, kind=kind)


def _http_answer(exc: HTTPException, request_id: str | None) -> Answer:
    status = exc.status_code
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    slug = phrase.lower().replace(" ", "-").replace("'", "")
    detail = exc.detail if exc.detail and exc.detail != phrase else f"{phrase}."
    kind = ProblemKind(status, slug, phrase)
    problem = Problem(
        type=kind.type, title=phrase, status=status, detail=detail, request_id=request_id
    )
    headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() in ("allow",)}
    return Answer(problem=problem, headers=headers, kind=kind)


@dataclass(frozen=True)
class ErrorTable:
    """Maps any exception to an answer; `infrastructure` types count as storage outages."""

    infrastructure: tuple[type[Exception], ...] = ()

    def kind_of(self, exc: Exception) -> ProblemKind | None:
        """The row that answers `exc`, or None when nobody expected it."""
        for error_type, kind in ERROR_TABLE:
            if isinstance(exc, error_type):
                return kind
        if self.infrastructure and isinstance(exc, self.infrastructure):
            return _STORAGE_DOWN
        return None

    def expected_answer(self, exc: Exception, request_id: str | None) -> Answer | None:
        """The answer for an error the table knows; None for a surprise (a bug)."""
        kind = self.kind_of(exc)
        return _answer(kind, exc, request_id) if kind is not None else None

    def answer(self, exc: Exception, request_id: str | None) -> Answer:
        if isinstance(exc, ValidationException):
            return _validation_answer(exc, request_id)
        kind = self.kind_of(exc)
        if kind is not None:
            return _answer(kind, exc, request_id)
        if isinstance(exc, HTTPException) and exc.status_code < 500:
            return _http_answer(exc, request_id)
        return _answer(_UNEXPECTED, exc, request_id)

    def handler(self) -> Callable[[Request[Any, Any, Any], Exception], Response[Problem]]:
        """A Litestar exception handler for `Exception` (so it sees every error)."""

        def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
            return problem_response(self.answer_request(request.scope, exc))

        return handle

    def answer_request(self, scope: Scope, exc: Exception) -> Answer:
        """`exc`'s answer to the request of `scope`, noted on its log line (and logged itself
        when it is a surprise): what every error response goes through."""
        answer = self.answer(exc, request_id_of(scope))
        annotate_request(scope, problem=answer.kind.slug)
        if answer.kind is _UNEXPECTED:
            # The traceback goes to the log (secrets are redacted there), never out.
            log.error("http.unexpected_error", error_type=type(exc).__name__, exc_info=exc)
        elif answer.kind is _UNREADABLE:
            # No traceback: the message says which key id or row, never key material.
            log.error("http.stored_secret_unreadable", error=str(exc))
        elif answer.kind is _STORAGE_DOWN and not isinstance(exc, StorageUnavailable):
            log.warning("http.infrastructure_error", error_type=type(exc).__name__)
        return answer


def invalid_parameter(name: str, message: str, source: str = "query") -> ValidationException:
    """A 400 naming the parameter, raised by handlers for what Litestar cannot check."""
    return ValidationException(
        detail=f"Invalid request parameter {name}",
        extra=[{"key": name, "source": source, "message": message}],
    )


def unexpected_problem(request_id: str | None) -> Problem:
    """What any unexpected failure answers: nothing about the failure itself."""
    return _answer(_UNEXPECTED, RuntimeError(), request_id).problem


def problem_response(answer: Answer) -> Response[Problem]:
    return Response(
        content=answer.problem,
        status_code=answer.problem.status,
        media_type=PROBLEM_JSON,
        headers=answer.headers,
    )


def problem_specs(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the problems a route may answer."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=HTTPStatus(status).phrase,
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
        for status in statuses
    }
