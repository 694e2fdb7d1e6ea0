"""Calendly's webhook deliveries: raw bytes in, verified and applied by the core, 200 out."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import structlog
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, InternalServerException
from litestar.params import FromPath
from litestar.status_codes import (
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
)
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)

from adapters.prometheus import webhook_answered
from domain.errors import InvalidSignature, StorageUnavailable
from domain.usecases.handle_webhook_event import WebhookCommand
from entrypoints.service.http.config import HttpConfig
from entrypoints.service.http.context import annotate_request, leave_unlogged
from entrypoints.service.http.errors import PROBLEM_JSON, ErrorTable, problem_specs
from entrypoints.service.http.openapi import WebhookOperation
from entrypoints.service.http.schemas import WebhookAck
from entrypoints.services import Services

SIGNATURE_HEADER: Final = "calendly-webhook-signature"
_RESPONSES: Final = problem_specs(400, 401, 413, 415, 503)

# Test-only fault hook (RELIABILITY.md row 13, tests/faults/test_crash_after_commit.py): with
# CALENDLY_CONNECT_FAULT=exit-after-webhook-commit in the environment when the process starts,
# the process dies right after a delivery's transaction committed and before it is answered, as
# a worker killed at the worst moment would. Read once at import; inert when unset.
FAULT_ENV: Final = "CALENDLY_CONNECT_FAULT"
EXIT_AFTER_COMMIT: Final = "exit-after-webhook-commit"
_EXIT_AFTER_COMMIT: Final = os.environ.get(FAULT_ENV) == EXIT_AFTER_COMMIT


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        detail=f"The body is larger than {limit} bytes.",
    )


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json"


async def read_delivery(request: Request[Any, Any, Any]) -> bytes:
    """The raw body, exactly as sent, or a 413/415 before it is read any further than needed.

    The size limit is the router's `request_max_body_size`: a declared Content-Length over it
    is refused before reading, and a chunked body is abandoned as soon as it passes it.
    """
    limit = request.route_handler.resolve_request_max_body_size()
    declared = request.content_length
    if limit is not None and declared is not None and declared > limit:
        raise _too_large(limit)
    if not _is_json(request.headers.get("content-type")):
        raise HTTPException(
            status_code=HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail="Webhook deliveries must be sent as application/json.",
        )
    try:
        return await request.body()
    except HTTPException as exc:
        if exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE and limit is not None:
            raise _too_large(limit) from exc
        raise


# The refusals answered with a 5xx: Calendly retries them, and a delivery whose last try gets
# one disables its subscription (the health record's beats follow them up, DR-45). Only our
# own failures count: the database or a fault of ours, never what a request itself caused.
SERVER_FAILURES: Final = frozenset({"storage_unavailable", "error"})


def _refusal(exc: Exception, infrastructure: tuple[type[Exception], ...]) -> str:
    """The metrics' outcome of a delivery that raised (what the error table answers)."""
    if isinstance(exc, InvalidSignature):
        return "rejected_signature"
    if isinstance(exc, HTTPException) and exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        return "too_large"
    if isinstance(exc, HTTPException) and exc.status_code == HTTP_415_UNSUPPORTED_MEDIA_TYPE:
        return "unsupported_media_type"
    if isinstance(exc, (StorageUnavailable, *infrastructure)):
        return "storage_unavailable"
    return "error"


async def _handle(
    scope: Scope,
    read_body: Callable[[], Awaitable[bytes]],
    signature: str | None,
    services: Services,
    config: HttpConfig,
    token: str | None,
) -> WebhookAck:
    """One delivery, counted by outcome and timed (a counter and a histogram: DR-39)."""
    started = time.perf_counter()
    try:
        ack = await _ingest(scope, await read_body(), signature, services, token)
    except Exception as exc:
        refusal = _refusal(exc, config.infrastructure_errors)
        webhook_answered(refusal, time.perf_counter() - started)
        if (
            refusal in SERVER_FAILURES
            and not isinstance(exc, HTTPException)  # the request's doing (a client hung up)
            and services.webhook_failures is not None
        ):
            services.webhook_failures.failed(token)  # Calendly retries; the worker follows up
        raise
    webhook_answered(ack.outcome, time.perf_counter() - started)
    if not config.webhook_log_sample.take():
        leave_unlogged(scope)  # counted above, recorded in the database: enough
    return ack


async def _ingest(
    scope: Scope, body: bytes, signature: str | None, services: Services, token: str | None
) -> WebhookAck:
    result = await services.handle_webhook(
        WebhookCommand(body=body, signature=signature, webhook_token=token)
    )
    if _EXIT_AFTER_COMMIT and result.outcome != "duplicate":  # a duplicate commits nothing
        os._exit(137)  # as if SIGKILLed: no answer, no clean-up (see FAULT_ENV)
    if result.user_id is not None:
        structlog.contextvars.bind_contextvars(user_id=result.user_id)
    annotate_request(scope, outcome=result.outcome, webhook_event=result.event)
    return WebhookAck(outcome=result.outcome)


def _through_litestar(
    request: Request[Any, Any, Any], services: Services, config: HttpConfig, token: str | None
) -> Awaitable[WebhookAck]:
    return _handle(
        request.scope,
        lambda: read_delivery(request),
        request.headers.get(SIGNATURE_HEADER),
        services,
        config,
        token,
    )


@post(
    "/",
    operation_id="receiveWebhook",
    status_code=200,
    responses=_RESPONSES,
    operation_class=WebhookOperation,
)
async def receive_webhook(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    http_config: NamedDependency[HttpConfig],
) -> WebhookAck:
    """Receive a Calendly delivery on the shared URL (routed by its Calendly user).

    The `Calendly-Webhook-Signature` is checked over the raw body: 401 when it does not
    verify, 200 once the delivery's effect (or, when it cannot be used, its record) is
    committed; a repeat answers `duplicate` and changes nothing.
    """
    return await _through_litestar(request, services, http_config, token=None)


@post(
    "/{token:str}",
    operation_id="receiveConnectionWebhook",
    status_code=200,
    responses=_RESPONSES,
    operation_class=WebhookOperation,
)
async def receive_connection_webhook(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    http_config: NamedDependency[HttpConfig],
    token: FromPath[str],
) -> WebhookAck:
    """Receive a Calendly delivery on a connection's own URL (routed by `token`).

    Same contract as the shared URL.
    """
    return await _through_litestar(request, services, http_config, token=token)


# ---------------------------------------------------------------- the lean path (issue 17)
_PREFIX: Final = "/webhooks/calendly"
_JSON_HEADERS: Final = [(b"content-type", b"application/json")]
_PROBLEM_HEADERS: Final = [(b"content-type", PROBLEM_JSON.encode())]


class WebhookFastPath:
    """Calendly's deliveries without Litestar's routing, dependencies and responses.

    A delivery is the service's most frequent request by far, and Litestar's layers were a
    quarter of its CPU. This ASGI layer, inside the request context (request id, log line,
    headers), answers the plain case itself: a POST to `/webhooks/calendly` or to a
    connection's URL, declared `application/json` with a `Content-Length` within the limit,
    from no browser (no `Origin`). It runs the same `_handle` as the routes below, and errors
    go through the same error table. Everything else (other methods, chunked or oversized
    bodies, other media types, CORS) goes to Litestar, which answers as it always did; the
    routes stay there too, for the OpenAPI document. tests/http/test_http_webhooks.py runs
    the same requests both ways and compares the answers.
    """

    def __init__(
        self, app: ASGIApp, services: Services, config: HttpConfig, errors: ErrorTable
    ) -> None:
        self.app = app
        self._services = services
        self._config = config
        self._errors = errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        taken = self._ours(scope)
        if taken is None:
            await self.app(scope, receive, send)
            return
        token, signature = taken

        async def read_body() -> bytes:
            chunks: list[bytes] = []
            while True:
                message = await receive()
                if message["type"] != "http.request":  # the client hung up
                    raise ClientDisconnected("client disconnected prematurely")
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    return b"".join(chunks)

        try:
            ack = await _handle(scope, read_body, signature, self._services, self._config, token)
        except Exception as exc:  # a client that hung up too: answered 500, as Litestar does
            answer = self._errors.answer_request(scope, exc)
            headers = [(k.lower().encode(), v.encode()) for k, v in answer.headers.items()]
            await _respond(
                send,
                answer.problem.status,
                msgspec.json.encode(answer.problem),
                _PROBLEM_HEADERS + headers,
            )
            return
        await _respond(send, 200, msgspec.json.encode(ack), _JSON_HEADERS)

    def _ours(self, scope: Scope) -> tuple[str | None, str | None] | None:
        """(the connection's token, None on the shared URL; the signature) when this path
        takes the request, None when Litestar does. Of a repeated header the first counts, as
        Litestar's `headers.get` takes it."""
        if scope["type"] != ScopeType.HTTP or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        token: str | None = None
        if path != _PREFIX:
            token = path.removeprefix(_PREFIX + "/")
            if token == path or not token or "/" in token:
                return None
        length: int | None = None
        json: bool | None = None
        signature: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return None  # two lengths, or one that is not a number: Litestar's
                length = int(value)
            elif name == b"content-type":
                if json is None:
                    json = _is_json(value.decode("latin-1"))
            elif name == b"calendly-webhook-signature":
                if signature is None:
                    signature = value.decode("latin-1")
            elif name == b"origin" or name == b"transfer-encoding":
                return None
        if length is None or length > self._config.max_webhook_body or not json:
            return None
        return token, signature


class ClientDisconnected(InternalServerException):
    """The client went away before its body arrived: what Litestar raises then (the request's
    doing, so no failure of ours is noted), and nobody is left to answer."""


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)
