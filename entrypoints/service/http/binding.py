"""The browser-binding cookie: only the browser that started an OAuth round trip can finish it."""

from __future__ import annotations

import secrets
from typing import Final

from litestar.datastructures import Cookie

from .config import HttpConfig

BINDING_COOKIE: Final = "cc_oauth_binding"
# Sent only to the callback (under ROOT_PATH), never to the API or anything else on the host.
BINDING_PATH: Final = "/oauth/calendly"
# As long as a pending authorization lives (StartConnect's STATE_TTL).
BINDING_MAX_AGE: Final = 600


def new_binding() -> str:
    return secrets.token_urlsafe(32)


def binding_cookie(value: str, config: HttpConfig) -> Cookie:
    """Set on the start's response: first-party only when the page is on this service's site.

    A page on another site gets no such cookie (browsers block third-party cookies); it binds
    the round trip with its completion challenge instead (DR-28).
    """
    return Cookie(
        key=BINDING_COOKIE,
        value=value,
        path=config.path(BINDING_PATH),
        max_age=BINDING_MAX_AGE,
        httponly=True,
        samesite="lax",
        secure=config.secure_cookies,
    )


def cleared_binding_cookie(config: HttpConfig) -> Cookie:
    return Cookie(
        key=BINDING_COOKIE,
        value="",
        path=config.path(BINDING_PATH),
        max_age=0,
        expires=0,
        httponly=True,
        samesite="lax",
        secure=config.secure_cookies,
    )
