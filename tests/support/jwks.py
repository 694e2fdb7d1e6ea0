"""A host's sign-in in miniature: signing keys, and their JWKS served on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, RSAPSSAlgorithm

from tests.support.http_app import AUDIENCE, ISSUER

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class SigningKey:
    """A private key, its `kid` and the algorithm it signs with."""

    kid: str
    algorithm: str
    private: PrivateKey

    def jwk(self) -> dict[str, Any]:
        """The public half as a JWK with its `kid`, `alg` and `use`."""
        public = self.private.public_key()
        family: Any
        if self.algorithm.startswith("RS"):
            family = RSAAlgorithm
        elif self.algorithm.startswith("PS"):
            family = RSAPSSAlgorithm
        elif self.algorithm.startswith("ES"):
            family = ECAlgorithm
        else:
            family = OKPAlgorithm
        data: dict[str, Any] = json.loads(family.to_jwk(public))
        data.update(kid=self.kid, alg=self.algorithm, use="sig")
        return data

    def token(self, user_id: str = "alice", *, expires_in: float = 600, **claims: Any) -> str:
        """A token signed by this key, for the test app's audience and issuer."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": user_id,
            "aud": AUDIENCE,
            "iss": ISSUER,
            "iat": now,
            "exp": now + expires_in,
        }
        payload.update(claims)
        return jwt.encode(
            payload, self.private, algorithm=self.algorithm, headers={"kid": self.kid}
        )


def signing_key(algorithm: str, kid: str | None = None) -> SigningKey:
    """A fresh key for `algorithm` (RS*/PS*: RSA 2048; ES256/ES384: P-256/P-384; EdDSA)."""
    private: PrivateKey
    if algorithm[:2] in ("RS", "PS"):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    elif algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(algorithm)
    return SigningKey(kid=kid or f"{algorithm.lower()}-key", algorithm=algorithm, private=private)


@dataclass
class JwksHost:
    """A JWKS endpoint that can be steered: its keys, whether it is up, and its fetch count."""

    keys: list[SigningKey] = field(default_factory=list)
    down: bool = False
    fetches: int = 0
    url: str = ""
    # Seconds each answer takes (a slow host).
    delay: float = 0.0
    # Where the host sends its JWKS instead (a 302), when set.
    moved_to: str | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.moved_to is not None:
            raise web.HTTPFound(self.moved_to)
        if self.down:
            return web.Response(status=503)
        return web.json_response({"keys": [key.jwk() for key in self.keys]})


@asynccontextmanager
async def serve_jwks(*keys: SigningKey) -> AsyncIterator[JwksHost]:
    """Serve `keys` as a JWKS on 127.0.0.1 (an ephemeral port) for the block's duration."""
    host = JwksHost(keys=list(keys))
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", host.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    host.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    try:
        yield host
    finally:
        await runner.cleanup()
