"""The example's HTTP app (aiohttp): its page, its sign-in, its JWKS, its notification inbox.

GET    /                               the page (HTML; static/app.js does the rest)
GET    /.well-known/jwks.json          the public keys calendly-connect verifies tokens with
GET    /api/session                    who is signed in, with a fresh token (user null: nobody)
POST   /api/session                    demo sign-in {"user": "<name>"}: sets the cookie
POST   /api/session/token              a fresh token for the signed-in user (the client's
                                       getToken calls it)
DELETE /api/session                    sign out
GET    /api/notifications              the signed-in user's last notifications
POST   /webhooks/calendly-connect      the service's signed notifications (HOST_WEBHOOK_URL)
"""

from __future__ import annotations

import html
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from .config import HERE, Config
from .keys import SigningKeys
from .notifications import (
    Inbox,
    Notification,
    NotificationInvalid,
    SignatureInvalid,
    verify_signature,
)
from .sessions import COOKIE_NAME, InvalidUserName, SessionCookies, clean_user_name

STATIC: Final = HERE / "static"
MAX_BODY: Final = 64 * 1024
WEBHOOK_PATH: Final = "/webhooks/calendly-connect"
JWKS_PATH: Final = "/.well-known/jwks.json"

CONFIG: Final = web.AppKey("config", Config)
KEYS: Final = web.AppKey("keys", SigningKeys)
SESSIONS: Final = web.AppKey("sessions", SessionCookies)
INBOX: Final = web.AppKey("inbox", Inbox)

log = logging.getLogger("host_app")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def content_security_policy(config: Config) -> str:
    """The page's policy: its own files, plus the service's origin for the client and its API.

    No inline script or style anywhere. The Calendly popup is a window, not a frame: it needs
    nothing here.
    """
    service = config.service_origin
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'self' {service}",
            f"connect-src 'self' {service}",
            "style-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def create_app(
    config: Config, keys: SigningKeys, sessions: SessionCookies, inbox: Inbox | None = None
) -> web.Application:
    app = web.Application(middlewares=[security_headers], client_max_size=MAX_BODY)
    app[CONFIG] = config
    app[KEYS] = keys
    app[SESSIONS] = sessions
    app[INBOX] = inbox or Inbox()
    app.router.add_get("/", index)
    app.router.add_get(JWKS_PATH, jwks)
    app.router.add_get("/api/session", read_session)
    app.router.add_post("/api/session", sign_in)
    app.router.add_post("/api/session/token", fresh_token)
    app.router.add_delete("/api/session", sign_out)
    app.router.add_get("/api/notifications", list_notifications)
    app.router.add_post(WEBHOOK_PATH, receive_notification)
    app.router.add_static("/static/", STATIC, append_version=False)
    return app


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"
    elif request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-cache"
    return response


def _problem(status: int, detail: str) -> web.Response:
    return web.json_response({"status": status, "detail": detail}, status=status)


def _same_origin(request: web.Request) -> bool:
    """A state-changing request from this app's own page (besides the SameSite=Strict cookie):
    a browser sends Origin with every cross-origin POST/DELETE, and it must name this host."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin.partition("://")[2] == request.host


def _session_body(request: web.Request, user: str) -> dict[str, Any]:
    config = request.app[CONFIG]
    issued = request.app[KEYS].issue(user, audience=config.audience, issuer=config.issuer)
    return {"user": user, "token": issued.token, "expires_at": issued.expires_at}


def _signed_in(request: web.Request) -> str | None:
    return request.app[SESSIONS].read(request.cookies.get(COOKIE_NAME))


# ------------------------------------------------------------------ the page and the JWKS
async def index(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    # Read on every request, so an edit shows on reload; the one value filled in is escaped.
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{SERVICE_URL}}", html.escape(config.service_url, quote=True))
    response = web.Response(text=page, content_type="text/html")
    response.headers["Content-Security-Policy"] = content_security_policy(config)
    response.headers["Cache-Control"] = "no-cache"
    return response


async def jwks(request: web.Request) -> web.Response:
    response = web.json_response(request.app[KEYS].jwks())
    # Verifiers cache it; a new key is picked up on its first unknown kid anyway.
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


# ------------------------------------------------------------------ the session
async def read_session(request: web.Request) -> web.Response:
    user = _signed_in(request)
    if user is None:
        # 200, not 401: nobody signed in is an ordinary answer for the page to show.
        return web.json_response({"user": None})
    return web.json_response(_session_body(request, user))


async def sign_in(request: web.Request) -> web.Response:
    if not _same_origin(request):
        return _problem(403, "cross-origin request refused")
    try:
        body = await request.json()
        user = clean_user_name(body.get("user") if isinstance(body, dict) else None)
    except (ValueError, InvalidUserName) as exc:
        detail = str(exc) if isinstance(exc, InvalidUserName) else "send JSON {'user': name}"
        return _problem(400, detail)
    sessions = request.app[SESSIONS]
    response = web.json_response(_session_body(request, user))
    response.set_cookie(
        COOKIE_NAME,
        sessions.make(user),
        max_age=sessions.lifetime,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.app[CONFIG].secure_cookies,
    )
    return response


async def fresh_token(request: web.Request) -> web.Response:
    if not _same_origin(request):
        return _problem(403, "cross-origin request refused")
    user = _signed_in(request)
    if user is None:
        return _problem(401, "not signed in")
    return web.json_response(_session_body(request, user))


async def sign_out(request: web.Request) -> web.Response:
    if not _same_origin(request):
        return _problem(403, "cross-origin request refused")
    response = web.Response(status=204)
    response.del_cookie(COOKIE_NAME, path="/", samesite="Strict")
    return response


# ------------------------------------------------------------------ notifications
async def list_notifications(request: web.Request) -> web.Response:
    user = _signed_in(request)
    if user is None:
        return _problem(401, "not signed in")
    items = request.app[INBOX].for_user(user)
    return web.json_response({"notifications": [item.as_json() for item in items]})


async def receive_notification(request: web.Request) -> web.Response:
    """A host webhook from calendly-connect: 401 unless it verifies (Standard Webhooks)."""
    body = await request.read()
    try:
        verify_signature(body, request.headers, request.app[CONFIG].webhook_secrets)
    except SignatureInvalid as exc:
        log.warning("notification refused: %s", exc)
        return _problem(401, "the signature is missing or invalid")
    try:
        notification = Notification.parse(
            request.headers.get("webhook-id", ""), body, received_at=time.time()
        )
    except NotificationInvalid as exc:
        return _problem(400, str(exc))
    fresh = request.app[INBOX].add(notification)
    log.info(
        "notification %s %s for %s%s",
        notification.id,
        notification.type,
        json.dumps(notification.user_id),
        "" if fresh else " (again: already handled)",
    )
    # 2xx tells the service it was delivered, also for a repeat: it stops retrying.
    return web.json_response({"received": True, "duplicate": not fresh})
