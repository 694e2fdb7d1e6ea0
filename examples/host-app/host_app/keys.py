"""The host's sign-in keys: ES256 keys kept in a folder, the tokens they sign, and their JWKS.

What a host developer copies: calendly-connect trusts a token when its `kid` names a key of the
JWKS it was configured with (JWT_JWKS_URL), the signature verifies, `aud` is JWT_AUDIENCE, `iss`
is JWT_ISSUER (when set) and `exp` is in the future. `sub` is the user id the service keys the
Calendly connection on, so it must be the host's stable id for the user.

Keys live in `<data>/keys/<kid>.pem` (PKCS#8, mode 0600); the newest file signs, all of them are
published. To rotate: add a key (`SigningKeys.add_new`), keep the old one published until every
token it signed has expired (15 minutes here), then delete its file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ALGORITHM: Final = "ES256"
TOKEN_TTL_SECONDS: Final = 15 * 60
KEY_SUFFIX: Final = ".pem"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: int  # Unix seconds


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: ec.EllipticCurvePrivateKey

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK, with the `kid`, `alg` and `use` a verifier selects it by."""
        jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, alg=ALGORITHM, use="sig")
        return jwk


def thumbprint(private: ec.EllipticCurvePrivateKey) -> str:
    """The RFC 7638 thumbprint of the public key (base64url, no padding): a stable `kid`."""
    jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    digest = hashlib.sha256(canonical).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class SigningKeys:
    """The keys of one folder, newest first; the first one signs."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self.keys = tuple(keys)

    @classmethod
    def load_or_create(cls, folder: Path) -> SigningKeys:
        """The keys in `folder`, making the folder and a first key when there is none."""
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = _read_keys(folder)
        if not keys:
            keys = [_write_new_key(folder)]
        return cls(keys)

    @classmethod
    def add_new(cls, folder: Path) -> SigningKeys:
        """Rotation: write a new key (it signs from now on), keep the others published."""
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        new = _write_new_key(folder)
        return cls([new, *(key for key in _read_keys(folder) if key.kid != new.kid)])

    @property
    def current(self) -> SigningKey:
        return self.keys[0]

    def jwks(self) -> dict[str, Any]:
        """What /.well-known/jwks.json serves: every public key, never a private part."""
        return {"keys": [key.public_jwk() for key in self.keys]}

    def issue(
        self,
        subject: str,
        *,
        audience: str,
        issuer: str,
        ttl_seconds: int = TOKEN_TTL_SECONDS,
        now: float | None = None,
    ) -> IssuedToken:
        """A token for `subject`, for the service's audience, signed by the current key."""
        issued_at = int(time.time() if now is None else now)
        expires_at = issued_at + ttl_seconds
        claims = {
            "sub": subject,
            "aud": audience,
            "iss": issuer,
            "iat": issued_at,
            "exp": expires_at,
        }
        key = self.current
        token = jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})
        return IssuedToken(token=token, expires_at=expires_at)


def _read_keys(folder: Path) -> list[SigningKey]:
    """Every key file of `folder`, newest first (by modification time, then name)."""
    files = sorted(
        (path for path in folder.iterdir() if path.name.endswith(KEY_SUFFIX)),
        key=lambda path: (path.stat().st_mtime_ns, path.name),
        reverse=True,
    )
    keys: list[SigningKey] = []
    for path in files:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(
            private.curve, ec.SECP256R1
        ):
            raise ValueError(f"{path} is not a P-256 (ES256) private key")
        keys.append(SigningKey(kid=thumbprint(private), private=private))
    return keys


def _write_new_key(folder: Path) -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    kid = thumbprint(private)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created with mode 0600 from the start: never readable by others, not even for a moment.
    fd = os.open(folder / f"{kid}{KEY_SUFFIX}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return SigningKey(kid=kid, private=private)
