"""Around every request: a request id, security headers, and one log line."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable
from typing import Any, Final, cast

import msgspec
import structlog
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Message,
    Receive,
    Scope,
    Send,
)

from .context import log_fields_of, request_id_of, set_request_id, unlogged
from .errors import PROBLEM_JSON, unexpected_problem

REQUEST_ID_HEADER: Final = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; frame-ancestors 'none'; "
    "object-src 'none'; base-uri 'none'"
)
# Sent with every response; the policy above only with HTML.
_ALWAYS: Final = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))
# Answers that must never be stored by a browser or proxy (tokens, personal data, one-off pages).
_NO_STORE_PREFIXES: Final = ("/api/", "/v1/", "/oauth/")
# Path segments after these prefixes are capabilities (a connection's webhook token).
_SECRET_PATH_PREFIXES: Final = ("/webhooks/calendly/",)

log = structlog.get_logger("http")


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1")
            return candidate if _SANE_REQUEST_ID.fullmatch(candidate) else None
    return None


def loggable_path(path: str) -> str:
    """The path without its query string and with capability segments redacted."""
    for prefix in _SECRET_PATH_PREFIXES:
        if path.startswith(prefix) and len(path) > len(prefix):
            return prefix + "{token}"
    return path


def _with_headers(
    headers: list[tuple[bytes, bytes]], path: str, request_id: str
) -> list[tuple[bytes, bytes]]:
    content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    replaced = {REQUEST_ID_HEADER.encode(), *(name for name, _ in _ALWAYS)}
    extra = [(REQUEST_ID_HEADER.encode(), request_id.encode("ascii")), *_ALWAYS]
    if content_type.lower().startswith(b"text/html"):
        replaced.add(b"content-security-policy")
        extra.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
    if path.startswith(_NO_STORE_PREFIXES):
        replaced.add(b"cache-control")
        extra.append((b"cache-control", b"no-store"))
    return [(k, v) for k, v in headers if k.lower() not in replaced] + extra


class RequestContextMiddleware:
    """Outermost ASGI layer, so unknown routes (404/405) get a request id and a log line too.

    Binds `request_id` with structlog.contextvars for everything logged during the request;
    the `current_user` dependency adds `user_id`, the server API's guard `api_key_prefix`. The
    request line carries method, path (redacted), status, duration and whatever the handlers
    annotated (outcome, problem).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function: no coroutine frame of its own under every request (and every open
        # live stream, issue 17).
        if scope["type"] != ScopeType.HTTP:
            return self.app(scope, receive, send)
        return self._http(scope, receive, send)

    async def _http(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        set_request_id(scope, request_id)
        path = loggable_path(scope["path"])
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status: int | None = None

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = _with_headers(
                    list(message.get("headers", ())), scope["path"], request_id
                )
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # Litestar turns every error into a response; this is an error while sending one.
            log.error("http.response_failed", exc_info=True)
            if status is not None:
                raise
            status = 500
            await self._internal_error(scope, send_with_headers)
        finally:
            if status is None or status >= 400 or not unlogged(scope):
                duration_ms = round((time.perf_counter() - started) * 1000, 2)
                level = log.warning if status is None or status >= 500 else log.info
                level(
                    "http.request",
                    method=scope["method"],
                    path=path,
                    status=status,
                    duration_ms=duration_ms,
                    **log_fields_of(scope),
                )
            structlog.contextvars.unbind_contextvars("user_id", "api_key_prefix")
            structlog.contextvars.reset_contextvars(**tokens)

    @staticmethod
    async def _internal_error(scope: Scope, send: Send) -> None:
        body = msgspec.json.encode(unexpected_problem(request_id_of(scope)))
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
        end: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": body,
            "more_body": False,
        }
        await send(start)
        await send(end)


class MountedUnder:
    """Serve under ROOT_PATH whether or not the proxy in front strips it.

    A request for `<root>/api/x` and one for `/api/x` reach the same route: everything inside
    (routes, the request log, the no-store rules) sees paths without the prefix. The scope's
    own `root_path` is cleared, because Litestar would cut the prefix out a second time.
    Without a prefix every request passes untouched (the webhook path pays nothing for it).
    """

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self._root = root_path
        self._raw_root = root_path.encode("ascii")

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if self._root and scope["type"] in (ScopeType.HTTP, ScopeType.WEBSOCKET):
            path = scope["path"]
            changes: dict[str, Any] = {"root_path": ""}
            if self._root and (path == self._root or path.startswith(self._root + "/")):
                changes["path"] = path[len(self._root) :] or "/"
                raw = scope.get("raw_path")
                if isinstance(raw, bytes) and raw.startswith(self._raw_root):
                    changes["raw_path"] = raw[len(self._raw_root) :] or b"/"
            scope = cast("Scope", {**scope, **changes})
        return self.app(scope, receive, send)
