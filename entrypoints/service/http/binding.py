"""The browser-binding cookie: only the browser that started an OAuth round trip can finish it."""

from __future__ import annotations

import secrets
from typing import Final

from litestar.datastructures import Cookie

BINDING_COOKIE: Final = "cc_oauth_binding"
# Sent only to the callback, never to the API or anything else on the host.
BINDING_PATH: Final = "/oauth/calendly"
# As long as a pending authorization lives (StartConnect's STATE_TTL).
BINDING_MAX_AGE: Final = 600


def new_binding() -> str:
    return secrets.token_urlsafe(32)


def binding_cookie(value: str, *, secure: bool) -> Cookie:
    return Cookie(
        key=BINDING_COOKIE,
        value=value,
        path=BINDING_PATH,
        max_age=BINDING_MAX_AGE,
        httponly=True,
        samesite="lax",
        secure=secure,
    )


def cleared_binding_cookie(*, secure: bool) -> Cookie:
    return Cookie(
        key=BINDING_COOKIE,
        value="",
        path=BINDING_PATH,
        max_age=0,
        expires=0,
        httponly=True,
        samesite="lax",
        secure=secure,
    )
