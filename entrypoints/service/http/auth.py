"""Who is calling: app users and the host's back end, each on its own side of the API.

`/api/...` (and the live stream) take an app user's `Authorization: Bearer <JWT>`: from the
host's own sign-in, or a user session this service issued (sessions.py). `/v1/...` takes an API
key (`Bearer ccsk_...`) only. Each side refuses the other's credentials with a 401 that says
which one it takes (DR-30).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import jwt
import structlog
from jwt import PyJWK
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers import BaseRouteHandler

from domain.api_keys import KEY_PREFIX, ApiKeyScope
from domain.errors import InsufficientScope, NotAuthenticated
from domain.model import is_user_id
from domain.secret import Secret
from domain.usecases.api_keys import AuthenticateApiKey

from .jwks import JwksKeys
from .sessions import UserSessions

ALGORITHM: Final = "HS256"
# What a JWKS key may sign with; HS* never comes from a JWKS (it would be a public secret).
ASYMMETRIC: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEV_TOKEN_TTL: Final = timedelta(hours=1)
MAX_TOKEN_LENGTH: Final = 8192
# A server API route's `opt` names the scope its key needs; a route that names none needs
# `write` (a route added without thinking about it is closed to read keys).
API_KEY_SCOPE: Final = "api_key_scope"


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
    """Checks the host's bearer tokens: HS256 under `secrets`, or signed by a key in its JWKS.

    The token's `alg` only routes it: HS256 goes to the secrets, anything else to the JWKS key
    its `kid` names, and that key's own algorithm is the only one it verifies (so a public key
    is never used as an HMAC secret). Dev login issues tokens under the first secret. A token
    whose `kid` names a user session of this service goes to `sessions` alone.
    """

    def __init__(
        self,
        secrets: Sequence[Secret],
        audience: str,
        issuer: str | None = None,
        *,
        jwks: JwksKeys | None = None,
        sessions: UserSessions | None = None,
        leeway_seconds: int = 30,
        user_claim: str = "sub",
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not secrets and jwks is None:
            raise ValueError("an authenticator needs HS256 secrets, a JWKS, or both")
        self._secrets = tuple(secrets)
        self._audience = audience
        self._issuer = issuer
        self._jwks = jwks
        self._sessions = sessions
        self._leeway = leeway_seconds
        self._user_claim = user_claim
        self._now = now

    async def verify(self, token: str) -> str:
        """The user id in a valid token; raises NotAuthenticated for anything else."""
        return (await self.authenticate(token)).user_id

    async def authenticate(self, token: str) -> Principal:
        """The user and expiry of a valid token; raises NotAuthenticated for anything else."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise NotAuthenticated("the bearer token is not valid") from exc
        if self._sessions is not None and UserSessions.names(header):
            user_id, expires_at = self._sessions.verify(token, header)
            return Principal(user_id=user_id, expires_at=expires_at)
        algorithm = header.get("alg")
        if algorithm == ALGORITHM:
            keys: list[str | PyJWK] = [secret.reveal() for secret in self._secrets]
        elif isinstance(algorithm, str) and algorithm in ASYMMETRIC and self._jwks is not None:
            kid = header.get("kid")
            key = await self._jwks.key(kid) if isinstance(kid, str) and kid else None
            keys = [key] if key is not None else []
        else:
            keys = []
        if not keys:
            raise NotAuthenticated("the bearer token is not valid")
        claims = self._claims(token, keys)
        subject = claims.get(self._user_claim)
        if not is_user_id(subject):
            raise NotAuthenticated("the bearer token names no usable user")
        return Principal(user_id=subject, expires_at=_expiry(claims))

    def _claims(self, token: str, keys: Sequence[str | PyJWK]) -> dict[str, Any]:
        required = ["exp", self._user_claim, "aud"] + (["iss"] if self._issuer else [])
        failure: jwt.InvalidTokenError | None = None
        for key in keys:
            # A PyJWK verifies with its own algorithm only; a secret with HS256 only.
            algorithms = [key.algorithm_name] if isinstance(key, PyJWK) else [ALGORITHM]
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=algorithms,
                    audience=self._audience,
                    issuer=self._issuer,
                    leeway=self._leeway,
                    options={"require": required},
                )
            except jwt.InvalidSignatureError as exc:
                failure = exc  # perhaps the next secret (rotation) signed it
                continue
            except jwt.ExpiredSignatureError as exc:
                raise NotAuthenticated("the bearer token has expired") from exc
            except jwt.InvalidTokenError as exc:
                # Which check failed helps an attacker more than a user: say no more than this.
                raise NotAuthenticated("the bearer token is not valid") from exc
            return claims
        raise NotAuthenticated("the bearer token is not valid") from failure

    @property
    def can_issue(self) -> bool:
        """True when there is an HS256 secret to sign dev-login tokens with."""
        return bool(self._secrets)

    def issue(self, user_id: str, ttl: timedelta = DEV_TOKEN_TTL) -> tuple[str, datetime]:
        """A token for `user_id` and when it expires (only dev login calls this)."""
        if not self._secrets:
            raise RuntimeError("dev login needs an HS256 secret (JWT_SECRET)")
        now = self._now().replace(microsecond=0)
        expires_at = now + ttl
        claims: dict[str, Any] = {
            self._user_claim: user_id,
            "aud": self._audience,
            "iat": now,
            "exp": expires_at,
        }
        if self._issuer is not None:
            claims["iss"] = self._issuer
        token = jwt.encode(claims, self._secrets[0].reveal(), algorithm=ALGORITHM)
        return token, expires_at


async def current_principal(
    request: Request[Any, Any, Any], auth: NamedDependency[JwtAuthenticator]
) -> Principal:
    """Dependency: the signed-in user and their token's expiry, or a 401 problem."""
    return await principal_of(request.headers.get("authorization"), auth)


async def principal_of(authorization: str | None, auth: JwtAuthenticator) -> Principal:
    """The app user an `Authorization` header speaks for (bound to the request's log lines);
    raises NotAuthenticated, saying why, for anything else."""
    token = bearer_token(authorization)
    if token is None:
        raise NotAuthenticated("sign in first: send 'Authorization: Bearer <token>'")
    if token.startswith(KEY_PREFIX):
        raise NotAuthenticated(
            "/api takes a user's token (a JWT from your sign-in, or a session from "
            "POST /v1/users/{user_id}/sessions); API keys are for the server API, /v1"
        )
    principal = await auth.authenticate(token)
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


def require_api_key(
    authenticate: AuthenticateApiKey,
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Any]:
    """A guard for the server API: a valid, unrevoked API key whose scope allows the route.

    Runs before anything of the request is read (401 or 403 problems); the key's prefix goes
    into every log line of the request.
    """

    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        token = bearer_token(connection.headers.get("authorization"))
        if token is None:
            raise NotAuthenticated(
                "send an API key: 'Authorization: Bearer ccsk_...' (calendly-connect api-keys "
                "create)"
            )
        if not token.startswith(KEY_PREFIX):
            raise NotAuthenticated(
                "/v1 takes an API key ('Authorization: Bearer ccsk_...'), not a user's token: "
                "use an API key (calendly-connect api-keys create); user tokens and sessions "
                "are for /api"
            )
        key = await authenticate(token)
        structlog.contextvars.bind_contextvars(api_key_prefix=key.shown)
        needed = ApiKeyScope(handler.opt.get(API_KEY_SCOPE, ApiKeyScope.WRITE))
        if not key.scope.allows(needed):
            raise InsufficientScope(needed.value)

    return guard
