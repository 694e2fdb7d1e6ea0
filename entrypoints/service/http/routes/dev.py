"""Development login: a token for any user id, registered only when enabled."""

from __future__ import annotations

import ipaddress
from typing import Any

from litestar import post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.params import JSONBody

from entrypoints.service.http.auth import JwtAuthenticator
from entrypoints.service.http.errors import problem_specs
from entrypoints.service.http.schemas import DevLoginRequest, TokenResponse


def _is_loopback(peer: str) -> bool:
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:  # not an address (a Unix socket, a test transport): not known local
        return False


def only_from_this_machine(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Refuse (403) a request whose peer is not a loopback address.

    Settings already refuse dev login unless HOST is loopback; this holds even when the
    listening socket came from elsewhere (`serve --fd`), and when a proxy on this machine
    forwards outside traffic with X-Forwarded-For (uvicorn then reports the forwarded client).
    Runs before the body is read, so a refused request learns nothing about validation.
    """
    peer = connection.client.host if connection.client is not None else ""
    if not _is_loopback(peer):
        raise PermissionDeniedException(
            detail="Development sign-in answers only requests from this machine (a loopback "
            "address); sign in through the app's real login instead."
        )


@post(
    "/api/dev/login",
    operation_id="devLogin",
    status_code=200,
    tags=["development"],
    guards=[only_from_this_machine],
    responses=problem_specs(400, 403),
)
async def dev_login(
    data: JSONBody[DevLoginRequest], auth: NamedDependency[JwtAuthenticator]
) -> TokenResponse:
    """Issue a one-hour bearer token for `user_id`.

    Development only: 404 when disabled, 403 unless the request comes from this machine.
    """
    token, expires_at = auth.issue(data.user_id)
    return TokenResponse(access_token=token, expires_at=expires_at)
