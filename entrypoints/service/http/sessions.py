"""User sessions: short-lived tokens the host's back end asks for (`POST /v1/users/{id}/sessions`).

A session is an HS256 JWT under a key derived from a token encryption key (each configured key
gives one; the active one signs), with this service's own issuer and audience and a `kid` that
names it, so it works whether the host's sign-in is JWT_SECRET or JWKS only, never verifies as
one of the host's tokens, and rotates with TOKEN_ENCRYPTION_KEY (DR-30). `/api/...` and the live
stream take it exactly like the host's token; `/v1` takes API keys only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import jwt

from domain.errors import NotAuthenticated
from domain.model import is_user_id

ALGORITHM: Final = "HS256"
ISSUER: Final = "calendly-connect/session"
AUDIENCE: Final = "calendly-connect/api"
# `kid` = this and the encryption key's id: how a session is told from the host's own tokens.
KID_PREFIX: Final = "calendly-connect-session:"
DEFAULT_TTL: Final = timedelta(minutes=15)
MIN_TTL_SECONDS: Final = 60
MAX_TTL_SECONDS: Final = 3600
LEEWAY_SECONDS: Final = 5
_KEY_CONTEXT: Final = b"calendly-connect/user-session/from-token-encryption-key/v1"


def _utc_now() -> datetime:
    return datetime.now(tz=UTC)


class UserSessions:
    """Issues sessions under the first key and verifies them under any (newest first)."""

    def __init__(
        self,
        keys: Sequence[tuple[str, bytes]],
        *,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not keys:
            raise ValueError("user sessions need at least one key")
        if any(len(key) < hashlib.sha256().digest_size for _, key in keys):
            raise ValueError("a session key has at least 32 bytes")
        self._active = keys[0][0]
        self._keys = dict(keys)
        self._now = now

    @staticmethod
    def key_from_encryption_key(key: bytes) -> bytes:
        """A session key derived from a token encryption key under its own context.

        HMAC-SHA256 as a PRF: the derived key tells nothing about the encryption key and
        equals no other key derived from it (the meetings cursors use another context).
        """
        return hmac.new(key, _KEY_CONTEXT, hashlib.sha256).digest()

    def issue(self, user_id: str, ttl: timedelta = DEFAULT_TTL) -> tuple[str, datetime]:
        """A session token for `user_id` and when it expires."""
        if not is_user_id(user_id):
            raise ValueError("not a user id this service accepts")
        seconds = int(ttl.total_seconds())
        if not MIN_TTL_SECONDS <= seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"a session lasts {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS} seconds")
        now = self._now().replace(microsecond=0)
        expires_at = now + timedelta(seconds=seconds)
        claims: dict[str, Any] = {
            "sub": user_id,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": expires_at,
        }
        token = jwt.encode(
            claims,
            self._keys[self._active],
            algorithm=ALGORITHM,
            headers={"kid": KID_PREFIX + self._active},
        )
        return token, expires_at

    @staticmethod
    def names(header: dict[str, Any]) -> bool:
        """Whether a token's (unverified) header says it is a session of this service."""
        kid = header.get("kid")
        return isinstance(kid, str) and kid.startswith(KID_PREFIX)

    def verify(self, token: str, header: dict[str, Any]) -> tuple[str, datetime]:
        """The user and expiry of a valid session; raises NotAuthenticated otherwise."""
        kid = str(header.get("kid", ""))
        key = self._keys.get(kid.removeprefix(KID_PREFIX))
        if header.get("alg") != ALGORITHM or key is None:
            raise NotAuthenticated("the session is not valid (its key is no longer configured)")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise NotAuthenticated(
                "the session has expired; ask your back end for a new one"
            ) from exc
        except jwt.InvalidTokenError as exc:
            raise NotAuthenticated("the bearer token is not valid") from exc
        subject = claims["sub"]
        if not is_user_id(subject):
            raise NotAuthenticated("the bearer token names no usable user")
        return subject, datetime.fromtimestamp(int(claims["exp"]), tz=UTC)
