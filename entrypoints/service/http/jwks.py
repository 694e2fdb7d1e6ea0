"""The host's published signing keys (JWKS): fetched, cached, refreshed, never hammered."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import jwt
import msgspec
import structlog
from jwt import PyJWK, PyJWKSet

# Fetches JWKS text from a URL; raises anything on failure (the cache keeps its last keys).
JwksFetch = Callable[[str], Awaitable[bytes]]

MAX_JWKS_BYTES: Final = 256 * 1024
FETCH_TIMEOUT_SECONDS: Final = 5.0
_log = structlog.get_logger(__name__)


class JwksUnavailable(Exception):
    """The JWKS could not be fetched or read (the message never holds key material)."""


async def fetch_with_aiohttp(url: str) -> bytes:
    """GET `url` with a short timeout and a size cap; raises JwksUnavailable on any failure.

    A session per fetch: fetches are rare (rate-limited per URL), and owning no session keeps
    the authenticator free of a lifecycle the HTTP app would have to start and stop.
    """
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            # No redirects: the operator names the JWKS URL itself, and a key source that
            # moves should be noticed, not followed wherever it points.
            session.get(
                url, headers={"accept": "application/json"}, allow_redirects=False
            ) as response,
        ):
            if response.status != 200:
                moved = " (a redirect: give the final URL)" if 300 <= response.status < 400 else ""
                raise JwksUnavailable(f"the JWKS answered {response.status}{moved}")
            body = await response.content.read(MAX_JWKS_BYTES + 1)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise JwksUnavailable(f"the JWKS could not be fetched ({type(exc).__name__})") from exc
    if len(body) > MAX_JWKS_BYTES:
        raise JwksUnavailable("the JWKS is too large")
    return body


def parse_jwks(body: bytes) -> dict[str, PyJWK]:
    """The usable asymmetric keys of a JWKS document by `kid`; raises JwksUnavailable.

    PyJWT's PyJWKSet does the key handling (and skips keys it cannot use); symmetric (`oct`)
    keys and keys without a `kid` are left out: a published key is never an HMAC secret.
    """
    try:
        document: Any = msgspec.json.decode(body)
        if not isinstance(document, dict):
            raise JwksUnavailable("the JWKS is not a JSON object")
        key_set = PyJWKSet.from_dict(document)
    except (msgspec.DecodeError, jwt.PyJWTError) as exc:
        raise JwksUnavailable(f"the JWKS holds no usable key ({type(exc).__name__})") from exc
    keys: dict[str, PyJWK] = {}
    for key in key_set.keys:
        if key.key_type != "oct" and key.key_id and key.public_key_use in (None, "sig"):
            keys.setdefault(key.key_id, key)
    return keys


@dataclass
class _Source:
    url: str
    keys: dict[str, PyJWK] = field(default_factory=dict)
    fetched_at: float | None = None  # last successful fetch (monotonic)
    attempted_at: float = -math.inf  # last fetch tried, successful or not
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # A refresh of stale keys running in the background (kept so it is not collected).
    refreshing: asyncio.Task[None] | None = None


class JwksKeys:
    """The keys of one or more JWKS URLs, by `kid`.

    Keys are kept for `lifespan` seconds; after that, a request whose key is cached is
    answered with it at once while the keys are refetched in the background (no request waits
    on the JWKS host for a key it has). An unknown `kid` refetches at once, but each URL is
    fetched at most once per `min_interval` seconds, so a flood of made-up `kid`s costs the
    JWKS host one request per interval. A failed fetch keeps the last good keys: tokens whose
    key is cached keep working while the host is down.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        fetch: JwksFetch = fetch_with_aiohttp,
        lifespan: float = 300.0,
        min_interval: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("a JWKS needs at least one URL")
        self._sources = [_Source(url) for url in urls]
        self._fetch = fetch
        self._lifespan = lifespan
        self._min_interval = min_interval
        self._monotonic = monotonic

    async def key(self, kid: str) -> PyJWK | None:
        """The key named `kid`, fetching when unknown (rate-limited); None if none."""
        found = self._cached(kid)
        if found is not None:
            for source in self._sources:
                if self._is_stale(source):
                    self._refresh_soon(source)
            return found
        for source in self._sources:
            await self._refresh(source)
            if (found := source.keys.get(kid)) is not None:
                return found
        return None

    def _cached(self, kid: str) -> PyJWK | None:
        for source in self._sources:
            if (found := source.keys.get(kid)) is not None:
                return found
        return None

    def _is_stale(self, source: _Source) -> bool:
        return source.fetched_at is None or (
            self._monotonic() - source.fetched_at >= self._lifespan
        )

    def _refresh_soon(self, source: _Source) -> None:
        if source.refreshing is None or source.refreshing.done():
            source.refreshing = asyncio.get_running_loop().create_task(self._refresh(source))

    async def close(self) -> None:
        """Wait for background refreshes (tests; the process's end otherwise drops them)."""
        for source in self._sources:
            if source.refreshing is not None:
                await source.refreshing

    async def _refresh(self, source: _Source) -> None:
        """Fetch `source` unless fetched (or tried) within the last `min_interval` seconds."""
        async with source.lock:  # concurrent requests wait for one fetch, not start many
            now = self._monotonic()
            if now - source.attempted_at < self._min_interval:
                return
            source.attempted_at = now
            try:
                keys = parse_jwks(await self._fetch(source.url))
            except Exception as exc:  # any failure at all: keep the last good keys
                _log.warning(
                    "jwks_fetch_failed",
                    url=source.url,
                    error=str(exc) if isinstance(exc, JwksUnavailable) else type(exc).__name__,
                    cached_keys=len(source.keys),
                )
                return
            source.keys = keys
            source.fetched_at = now
