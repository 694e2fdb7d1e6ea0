"""Who is calling: app users send `Authorization: Bearer <JWT>` signed with the shared secret."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import jwt
import structlog
from litestar import Request
from litestar.di import NamedDependency

from domain.errors import NotAuthenticated
from domain.secret import Secret

ALGORITHM: Final = "HS256"
DEV_TOKEN_TTL: Final = timedelta(hours=1)
MAX_TOKEN_LENGTH: Final = 8192
MAX_USER_ID_LENGTH: Final = 255


def _utc_now() -> datetime:
    return datetime.now(tz=UTC)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when there is no header."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise NotAuthenticated("the Authorization header must be 'Bearer <token>'")
    if len(token) > MAX_TOKEN_LENGTH:
        raise NotAuthenticated("the bearer token is too long")
    return token


@dataclass(frozen=True)
class Principal:
    """Who a valid bearer token speaks for, and until when (None: the token names no end)."""

    user_id: str
    expires_at: datetime | None


def _expiry(claims: dict[str, Any]) -> datetime | None:
    """The `exp` claim as PyJWT checked it (`int(exp)`); None when absent or past year 9999."""
    if "exp" not in claims:
        return None
    try:
        return datetime.fromtimestamp(int(claims["exp"]), tz=UTC)
    except (OverflowError, OSError, ValueError, TypeError):
        return None  # accepted by PyJWT, but beyond any datetime: it never ends in practice


class JwtAuthenticator:
    """Checks (and, for dev login, issues) HS256 tokens whose `sub` is the app's user id."""

    def __init__(
        self,
        secret: Secret,
        audience: str,
        issuer: str | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._secret = secret
        self._audience = audience
        self._issuer = issuer
        self._now = now

    def verify(self, token: str) -> str:
        """The user id in a valid token; raises NotAuthenticated for anything else."""
        return self.authenticate(token).user_id

    def authenticate(self, token: str) -> Principal:
        """The user and expiry of a valid token; raises NotAuthenticated for anything else."""
        required = ["exp", "sub", "aud"] + (["iss"] if self._issuer is not None else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret.reveal(),
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError as exc:
            raise NotAuthenticated("the bearer token has expired") from exc
        except jwt.InvalidTokenError as exc:
            # Which check failed helps an attacker more than a user: say no more than this.
            raise NotAuthenticated("the bearer token is not valid") from exc
        subject = claims.get("sub")
        if (
            not isinstance(subject, str)
            or not 1 <= len(subject) <= MAX_USER_ID_LENGTH
            or not subject.isprintable()
        ):
            raise NotAuthenticated("the bearer token names no usable user")
        return Principal(user_id=subject, expires_at=_expiry(claims))

    def issue(self, user_id: str, ttl: timedelta = DEV_TOKEN_TTL) -> tuple[str, datetime]:
        """A token for `user_id` and when it expires (only dev login calls this)."""
        now = self._now().replace(microsecond=0)
        expires_at = now + ttl
        claims: dict[str, Any] = {
            "sub": user_id,
            "aud": self._audience,
            "iat": now,
            "exp": expires_at,
        }
        if self._issuer is not None:
            claims["iss"] = self._issuer
        return jwt.encode(claims, self._secret.reveal(), algorithm=ALGORITHM), expires_at


async def current_principal(
    request: Request[Any, Any, Any], auth: NamedDependency[JwtAuthenticator]
) -> Principal:
    """Dependency: the signed-in user and their token's expiry, or a 401 problem."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise NotAuthenticated("sign in first: send 'Authorization: Bearer <token>'")
    principal = auth.authenticate(token)
    structlog.contextvars.bind_contextvars(user_id=principal.user_id)
    return principal


async def current_user(principal: NamedDependency[Principal]) -> str:
    """Dependency: the signed-in user's id (from `principal`, resolved once per request)."""
    return principal.user_id


async def optional_user(
    request: Request[Any, Any, Any], auth: NamedDependency[JwtAuthenticator]
) -> str | None:
    """Dependency: like `current_user`, but None when no Authorization header was sent."""
    if "authorization" not in request.headers:
        return None
    return (await current_principal(request, auth)).user_id
