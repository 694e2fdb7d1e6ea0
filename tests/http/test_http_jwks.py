"""The host's own sign-in: JWKS keys by `kid`, HS256 rotation, leeway, the user claim."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient

from domain.errors import NotAuthenticated
from domain.secret import Secret
from entrypoints.service.http.app import create_app
from entrypoints.service.http.auth import JwtAuthenticator
from entrypoints.service.http.config import HttpConfig
from entrypoints.service.http.jwks import JwksKeys
from tests.support.http_app import (
    AUDIENCE,
    BASE_URL,
    ISSUER,
    JWT_SECRET,
    Api,
    make_config,
    make_token,
    services_of,
)
from tests.support.jwks import SigningKey, serve_jwks, signing_key

PROTECTED = "/api/calendly/connection"
NEW_SECRET = "the-newer-hs256-secret-of-at-least-32-chars"
AUTHENTICATED = 404  # alice is signed in and simply has no connection yet
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


@asynccontextmanager
async def client_of(api: Api, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app on this event loop (so it can reach the JWKS served on it)."""
    if not overrides.get("jwt_secrets", True):
        overrides.setdefault("cursor_key", bytes(range(32)))
    app = create_app(services_of(api.core, api.readiness), make_config(**overrides))
    # httpx types the ASGI app loosely; Litestar's narrower signature is the same protocol.
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield client


async def status(client: httpx.AsyncClient | AsyncTestClient[Any], token: str) -> int:
    response = await client.get(PROTECTED, headers={"authorization": f"Bearer {token}"})
    return response.status_code


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_each_algorithm_verifies_with_the_key_its_kid_names(api: Api, algorithm: str) -> None:
    key = signing_key(algorithm)
    impostor = SigningKey(kid=key.kid, algorithm=algorithm, private=signing_key(algorithm).private)
    async with serve_jwks(key) as host, client_of(api, jwt_jwks_urls=(host.url,)) as client:
        assert await status(client, key.token()) == AUTHENTICATED
        assert await status(client, impostor.token()) == 401
        assert await status(client, key.token(expires_in=-60)) == 401
        assert await status(client, key.token(aud="someone-else")) == 401


async def test_jwks_and_hs256_secrets_work_side_by_side(api: Api) -> None:
    key = signing_key("ES256")
    async with (
        serve_jwks(key) as host,
        client_of(api, jwt_jwks_urls=(host.url,), jwt_secrets=(Secret(JWT_SECRET),)) as client,
    ):
        assert await status(client, key.token()) == AUTHENTICATED
        assert await status(client, make_token("alice")) == AUTHENTICATED


def hs256_with(secret: bytes, kid: str) -> str:
    """An HS256 token built by hand: PyJWT itself refuses to use a PEM as an HMAC secret."""

    def part(data: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")

    now = int(time.time())
    claims = {"sub": "mallory", "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 600}
    signing_input = part({"alg": "HS256", "typ": "JWT", "kid": kid}) + b"." + part(claims)
    mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()


@pytest.mark.parametrize("with_secret", [False, True], ids=["jwks-only", "jwks-and-secret"])
async def test_an_hs256_token_signed_with_the_public_key_is_refused(
    api: Api, with_secret: bool
) -> None:
    key = signing_key("RS256")
    public_pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    secrets = (Secret(JWT_SECRET),) if with_secret else ()
    async with (
        serve_jwks(key) as host,
        client_of(api, jwt_jwks_urls=(host.url,), jwt_secrets=secrets) as client,
    ):
        assert await status(client, hs256_with(public_pem, key.kid)) == 401
        jwk_text = json.dumps(key.jwk()).encode()
        assert await status(client, hs256_with(jwk_text, key.kid)) == 401
        # And the key itself still works, so the refusals above are about the algorithm.
        assert await status(client, key.token()) == AUTHENTICATED


async def test_a_token_whose_alg_differs_from_its_keys_is_refused(api: Api) -> None:
    rsa_key = signing_key("RS256")
    # An RS384 token under the RS256 key's kid: the key's own algorithm is the only one.
    relabelled = SigningKey(kid=rsa_key.kid, algorithm="RS384", private=rsa_key.private)
    async with serve_jwks(rsa_key) as host, client_of(api, jwt_jwks_urls=(host.url,)) as client:
        assert await status(client, relabelled.token()) == 401


async def test_every_hs256_secret_verifies(api: Api) -> None:
    secrets = (Secret(NEW_SECRET), Secret(JWT_SECRET))
    async with client_of(api, jwt_secrets=secrets) as client:
        assert await status(client, make_token("alice", secret=NEW_SECRET)) == AUTHENTICATED
        assert await status(client, make_token("alice", secret=JWT_SECRET)) == AUTHENTICATED
        other = "a-third-secret-nobody-configured-0123456789"
        assert await status(client, make_token("alice", secret=other)) == 401


@pytest.mark.parametrize(
    ("claim", "offset", "expected"),
    [
        pytest.param("iat", 5, AUTHENTICATED, id="iat-5s-ahead"),
        pytest.param("nbf", 5, AUTHENTICATED, id="nbf-5s-ahead"),
        pytest.param("exp", -29, AUTHENTICATED, id="exp-29s-ago"),
        pytest.param("exp", -31, 401, id="exp-31s-ago"),
        pytest.param("iat", 60, 401, id="iat-60s-ahead"),
    ],
)
async def test_the_default_leeway_is_30_seconds(
    api: Api, claim: str, offset: int, expected: int
) -> None:
    claims: dict[str, Any] = {claim: int(time.time()) + offset}
    token = make_token("alice", **claims)
    assert await status(api.client, token) == expected


async def test_a_leeway_of_zero_is_strict(api: Api) -> None:
    async with client_of(api, jwt_leeway_seconds=0) as client:
        assert await status(client, make_token("alice", iat=int(time.time()) + 5)) == 401


def with_user_id(value: object) -> str:
    now = int(time.time())
    claims = {"user_id": value, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 600}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


async def test_the_user_claim_is_configurable(api: Api) -> None:
    async with client_of(api, jwt_user_claim="user_id") as client:
        assert await status(client, make_token("sub-only")) == 401
        assert await status(client, with_user_id("alice")) == AUTHENTICATED
        assert await status(client, with_user_id("")) == 401
        assert await status(client, with_user_id(["alice"])) == 401
    auth = JwtAuthenticator((Secret(JWT_SECRET),), AUDIENCE, ISSUER, user_claim="user_id")
    assert (await auth.authenticate(with_user_id("alice"))).user_id == "alice"


async def test_a_flood_of_unknown_kids_fetches_the_jwks_at_most_twice(api: Api) -> None:
    key = signing_key("RS256")
    async with serve_jwks(key) as host, client_of(api, jwt_jwks_urls=(host.url,)) as client:
        for _ in range(50):
            stranger = signing_key("ES256", kid=uuid.uuid4().hex)
            assert await status(client, stranger.token()) == 401
        assert await status(client, key.token()) == AUTHENTICATED

    assert 1 <= host.fetches <= 2


def test_dev_login_or_a_derived_cursor_key_need_a_secret() -> None:
    with pytest.raises(ValueError, match="HS256"):
        make_config(jwt_secrets=(), jwt_jwks_urls=("https://auth.example/jwks.json",))
    with pytest.raises(ValueError, match="HS256"):
        make_config(
            jwt_secrets=(),
            jwt_jwks_urls=("https://auth.example/jwks.json",),
            cursor_key=bytes(32),
            dev_login_enabled=True,
        )
    with pytest.raises(ValueError, match="jwt_jwks_urls"):
        make_config(jwt_secrets=())
    config = make_config(
        jwt_secrets=(), jwt_jwks_urls=("https://auth.example/jwks.json",), cursor_key=bytes(32)
    )
    assert isinstance(config, HttpConfig)
    assert "cursor_key=" not in repr(config)


class Clock:
    """A steerable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def authenticator_of(url: str, clock: Clock) -> JwtAuthenticator:
    return JwtAuthenticator((), AUDIENCE, ISSUER, jwks=keys_of(url, clock))


def keys_of(url: str, clock: Clock) -> JwksKeys:
    return JwksKeys([url], lifespan=300, min_interval=10, monotonic=clock)


async def accepted(auth: JwtAuthenticator, key: SigningKey) -> bool:
    try:
        principal = await auth.authenticate(key.token("alice"))
    except NotAuthenticated:
        return False
    assert principal.user_id == "alice"
    assert principal.expires_at is not None
    return True


async def test_rotation_accepts_the_new_kid_and_the_old_until_it_is_removed() -> None:
    old, new = signing_key("RS256", kid="old"), signing_key("ES256", kid="new")
    clock = Clock()
    async with serve_jwks(old) as host:
        auth = authenticator_of(host.url, clock)
        assert await accepted(auth, old)
        assert host.fetches == 1

        host.keys = [new, old]  # the host publishes its next key
        clock.advance(11)
        assert await accepted(auth, new)  # unknown kid: one refetch finds it
        assert await accepted(auth, old)
        assert host.fetches == 2

        host.keys = [new]  # the old key is retired
        assert await accepted(auth, old)  # still cached until the keys' lifespan ends
        clock.advance(301)
        # Stale: answered from the cache at once, refreshed in the background.
        assert await accepted(auth, old)
        await wait_for_fetches(host, 3)
        assert not await accepted(auth, old)
        assert await accepted(auth, new)
        assert host.fetches == 3


async def wait_for_fetches(host: Any, count: int) -> None:
    for _ in range(200):
        if host.fetches >= count:
            await asyncio.sleep(0.05)  # and for the refresh to store what it got
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the JWKS was fetched {host.fetches} times, not {count}")


async def test_a_stale_cache_never_makes_a_request_wait_for_the_jwks_host() -> None:
    key = signing_key("ES256", kid="k")
    clock = Clock()
    async with serve_jwks(key) as host:
        jwks = keys_of(host.url, clock)
        auth = JwtAuthenticator((), AUDIENCE, ISSUER, jwks=jwks)
        assert await accepted(auth, key)
        host.delay = 3.0  # a slow JWKS host
        clock.advance(301)

        started = asyncio.get_running_loop().time()
        assert await accepted(auth, key)
        waited = asyncio.get_running_loop().time() - started
        assert waited < 1.0, waited  # not the 3 s of the refetch
        await jwks.close()
        assert host.fetches == 2


async def test_a_jwks_host_that_is_down_keeps_the_cached_keys_working() -> None:
    key = signing_key("EdDSA", kid="ed")
    clock = Clock()
    async with serve_jwks(key) as host:
        auth = authenticator_of(host.url, clock)
        assert await accepted(auth, key)
        host.down = True
        clock.advance(301)  # the cache is stale: the refresh fails, the keys stay
        assert await accepted(auth, key)
        await wait_for_fetches(host, 2)
        assert await accepted(auth, key)
        assert not await accepted(auth, signing_key("RS256", kid="unknown"))
        assert host.fetches == 2  # and the failed host is not asked again within 10 s

        host.down = False
        clock.advance(11)
        assert await accepted(auth, key)
        await wait_for_fetches(host, 3)


async def test_a_jwks_url_that_redirects_is_not_followed() -> None:
    key = signing_key("ES256", kid="k")
    async with serve_jwks(key) as real, serve_jwks() as moved:
        moved.moved_to = real.url
        auth = authenticator_of(moved.url, Clock())
        assert not await accepted(auth, key)
        assert real.fetches == 0
        assert moved.fetches == 1


async def test_an_unreachable_jwks_refuses_cleanly() -> None:
    key = signing_key("ES256")
    async with serve_jwks(key) as host:
        url = host.url
    auth = authenticator_of(url, Clock())  # nothing listens there any more
    assert not await accepted(auth, key)


async def test_dev_login_tokens_are_signed_with_the_first_secret() -> None:
    auth = JwtAuthenticator((Secret(NEW_SECRET), Secret(JWT_SECRET)), AUDIENCE, ISSUER)
    token, _ = auth.issue("alice")
    claims = jwt.decode(token, NEW_SECRET, algorithms=["HS256"], audience=AUDIENCE)
    assert claims["sub"] == "alice"
    assert (await auth.authenticate(token)).user_id == "alice"


KNOWN_KIDS = ("a", "b")


@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=400, allow_nan=False),
            st.one_of(st.sampled_from(KNOWN_KIDS), st.text(min_size=1, max_size=8)),
        ),
        min_size=1,
        max_size=40,
    )
)
@settings(max_examples=200, deadline=None)
def test_whatever_kids_arrive_fetches_are_spaced_and_known_keys_always_found(
    steps: list[tuple[float, str]],
) -> None:
    """Any flood of `kid`s, at any pace: fetches at least 10 s apart, known keys never refused."""
    document = json.dumps(
        {"keys": [signing_key("ES256", kid=kid).jwk() for kid in KNOWN_KIDS]}
    ).encode()
    clock = Clock()
    fetched_at: list[float] = []

    async def fetch(url: str) -> bytes:
        fetched_at.append(clock())
        return document

    async def run() -> None:
        jwks = JwksKeys(["https://id.example/jwks"], fetch=fetch, monotonic=clock)
        for pause, kid in steps:
            clock.advance(pause)
            found = await jwks.key(kid)
            await jwks.close()
            assert (found is not None) == (kid in KNOWN_KIDS), kid

    asyncio.run(run())
    assert all(later - earlier >= 10 for earlier, later in itertools.pairwise(fetched_at))
