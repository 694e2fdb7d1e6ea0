"""Development login: a token for any user id, registered only when enabled."""

from __future__ import annotations

from litestar import post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from entrypoints.http.auth import JwtAuthenticator
from entrypoints.http.errors import problem_specs
from entrypoints.http.schemas import DevLoginRequest, TokenResponse


@post(
    "/api/dev/login",
    operation_id="devLogin",
    status_code=200,
    tags=["development"],
    responses=problem_specs(400),
)
async def dev_login(
    data: JSONBody[DevLoginRequest], auth: NamedDependency[JwtAuthenticator]
) -> TokenResponse:
    """Issue a one-hour bearer token for `user_id` (development only; 404 when disabled)."""
    token, expires_at = auth.issue(data.user_id)
    return TokenResponse(access_token=token, expires_at=expires_at)
