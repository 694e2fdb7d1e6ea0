"""Calendly's answers as the domain's errors: error statuses, OAuth errors, unreadable bodies."""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec
import structlog

from domain.errors import (
    AlreadyExists,
    CalendlyError,
    CalendlyUnavailable,
    InvalidGrant,
    PermissionDenied,
    PlanRequired,
    RateLimited,
    ResourceNotFound,
    TokenRejected,
)

from . import wire
from .transport import Answer

PLAN_REQUIRED_PREFIX: Final = "Please upgrade your Calendly account"

log = structlog.get_logger(__name__)
S = TypeVar("S")


def api_error(method: str, path: str, answer: Answer, body: object) -> CalendlyError:
    """The REST API's error `answer` (whose redacted body is `body`) as its domain error."""
    envelope = _convert(body, wire.ApiErrorBody)
    said = (envelope.message or envelope.title or "") if envelope else ""
    status = answer.status
    message = f"Calendly answered {status} to {method} {path}" + (f": {said}" if said else "")
    if status == 429:
        return RateLimited(status, body, answer.reset_seconds())
    if status >= 500:
        return CalendlyUnavailable(status, body, message)
    if status == 401:
        return TokenRejected(status, body, message)
    if status == 403:
        if envelope and (envelope.message or "").startswith(PLAN_REQUIRED_PREFIX):
            return PlanRequired(status, body, message)
        return PermissionDenied(status, body, message)
    if status == 404:
        return ResourceNotFound(status, body, message)
    if status == 409:
        return AlreadyExists(status, body, message)
    return CalendlyError(status, body, message)


def oauth_error(method: str, path: str, answer: Answer, body: object) -> CalendlyError:
    """The OAuth server's error `answer` (whose redacted body is `body`) as its domain error.

    `invalid_client` (our own credentials are wrong) is a plain `CalendlyError`: it is not the
    user's grant that failed, so it must not force a reconnect.
    """
    parsed = _convert(body, wire.OAuthErrorBody)
    error = parsed.error if parsed else None
    status = answer.status
    message = f"Calendly answered {status} to {method} {path}" + (f": {error}" if error else "")
    if status == 429:
        return RateLimited(status, body, answer.reset_seconds())
    if status >= 500:
        return CalendlyUnavailable(status, body, message)
    if error == "invalid_grant":
        return InvalidGrant(status, body, message)
    if error == "invalid_client" or status == 401:
        return CalendlyError(status, body, f"{message} (check the OAuth client id and secret)")
    return CalendlyError(status, body, message)


def decode(method: str, path: str, answer: Answer, kind: type[S]) -> S:
    """A 2xx body as `kind`; one that does not fit is `CalendlyUnavailable` (status kept)."""
    return decode_raw(method, path, answer.status, answer.raw, kind)


def decode_item(method: str, path: str, raw: msgspec.Raw, kind: type[S]) -> S:
    """One item of a collection page (which was a 2xx) as `kind`, as strictly as `decode`."""
    return decode_raw(method, path, 200, bytes(raw), kind)


def decode_raw(method: str, path: str, status: int, raw: bytes, kind: type[S]) -> S:
    """`raw` as `kind`; one that does not fit is `CalendlyUnavailable` (logged, body left out)."""
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: absurdly deep JSON
        log.warning(
            "calendly.unparsable_response",
            method=method,
            path=path,
            status=status,
            # msgspec names the JSON path that failed, never a value; the body itself (personal
            # data, maybe live tokens) stays out of the log.
            problem=str(exc),
            size=len(raw),
        )
        raise CalendlyUnavailable(
            status, None, f"Calendly's answer to {method} {path} could not be read"
        ) from exc


def lenient_item(path: str, raw: msgspec.Raw, kind: type[S]) -> S | None:
    """One item of a listing as `kind`, or None (logged) when it does not fit.

    One odd event or invitee must not stop a whole sync; the rest of the page still counts.
    """
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, RecursionError) as exc:
        skip_item(path, str(exc))
        return None


def skip_item(path: str, problem: str) -> None:
    """Log an item of a listing that is left out, and why."""
    # Like `decode`: the path msgspec names, never the item (personal data).
    log.warning("calendly.item_skipped", method="GET", path=path, problem=problem)


def _convert(body: object, kind: type[S]) -> S | None:
    if not isinstance(body, dict):
        return None
    try:
        return msgspec.convert(body, kind)
    except msgspec.ValidationError:
        return None


__all__ = [
    "api_error",
    "decode",
    "decode_item",
    "decode_raw",
    "lenient_item",
    "oauth_error",
    "skip_item",
]
