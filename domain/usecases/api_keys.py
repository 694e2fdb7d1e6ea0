"""The server API's keys: create (shown once), list, revoke, and recognise one on a request."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Final, NamedTuple

import msgspec

from domain.api_keys import (
    KEY_BYTES,
    KEY_PREFIX,
    ApiKey,
    ApiKeyScope,
    digest,
    is_well_formed,
    name_problem,
    prefix_in,
    shown_prefix,
)
from domain.errors import ApiKeyNotFound, ConcurrentUpdate, NotAuthenticated
from domain.ports import ApiKeyStore, Clock, Randomness
from domain.secret import Secret

# How long a process trusts what it last read about a key: a revoked key stops working in every
# process within this (DR-30).
CACHE_SECONDS: Final = 5.0
# Keys (and unknown digests) remembered per process; past this the oldest are forgotten.
MAX_CACHED: Final = 10_000
# A new key's prefix collides with a stored one once in 2^48 / (keys stored): try again.
_ATTEMPTS: Final = 3


class NewApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key just created: `secret` is the key itself, shown this once and never stored."""

    key: ApiKey
    secret: Secret


class CreateApiKey:
    def __init__(self, store: ApiKeyStore, clock: Clock, random: Randomness) -> None:
        self._store = store
        self._clock = clock
        self._random = random

    async def __call__(self, name: str, scope: ApiKeyScope) -> NewApiKey:
        """Raises ValueError for a name `name_problem` refuses."""
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(problem)
        for _ in range(_ATTEMPTS):
            presented = KEY_PREFIX + self._random.token(KEY_BYTES)
            if not is_well_formed(presented):
                raise RuntimeError("the randomness made a key of the wrong shape")
            key = ApiKey(
                id=self._random.uuid(),
                name=name.strip(),
                prefix=shown_prefix(presented),
                scope=scope,
                created_at=self._clock.now(),
            )
            if await self._store.add(key, digest(presented)):
                return NewApiKey(key=key, secret=Secret(presented))
        raise ConcurrentUpdate("no free key prefix was found; try again")


class ListApiKeys:
    def __init__(self, store: ApiKeyStore) -> None:
        self._store = store

    async def __call__(self) -> list[ApiKey]:
        return await self._store.all()


class Revoked(msgspec.Struct, frozen=True, kw_only=True):
    key: ApiKey
    already_revoked: bool


class RevokeApiKey:
    """Revoking is final and idempotent; a revoked key fails everywhere within CACHE_SECONDS."""

    def __init__(self, store: ApiKeyStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def __call__(self, reference: str) -> Revoked:
        """`reference`: the key's id, its prefix (`ccsk_AbCdEfGh` or `AbCdEfGh`) or the key."""
        key = await self._find(reference.strip())
        if key is None:
            raise ApiKeyNotFound(reference)
        if not key.active:
            return Revoked(key=key, already_revoked=True)
        now = self._clock.now()
        revoked = await self._store.revoke(key.id, now)
        if revoked is None:  # deleted meanwhile (nothing deletes keys today)
            raise ApiKeyNotFound(reference)
        # Another revoke may have come first: then its time stands.
        return Revoked(key=revoked, already_revoked=revoked.revoked_at != now)

    async def _find(self, reference: str) -> ApiKey | None:
        if is_well_formed(reference):
            return await self._store.find(digest(reference))
        try:
            key_id = uuid.UUID(reference)
        except ValueError:
            prefix = prefix_in(reference)
            return await self._store.get(prefix=prefix) if prefix else None
        return await self._store.get(key_id=str(key_id))


class _Cached(NamedTuple):
    key: ApiKey | None
    until: datetime


class AuthenticateApiKey:
    """Who `Authorization: Bearer ccsk_...` is, without asking Postgres on every request.

    A key is looked up by its SHA-256 digest (an indexed equality, no comparison of secrets
    that could leak by its timing), and what was found, a key or nothing, is trusted for
    CACHE_SECONDS. Uses are noted in memory and written by `flush_usage` (the service calls it
    every minute and at stop), never by the request itself.
    """

    def __init__(
        self,
        store: ApiKeyStore,
        clock: Clock,
        *,
        cache_seconds: float = CACHE_SECONDS,
        max_cached: int = MAX_CACHED,
    ) -> None:
        self._store = store
        self._clock = clock
        self._cache_for = timedelta(seconds=cache_seconds)
        self._max_cached = max_cached
        self._cache: dict[bytes, _Cached] = {}
        # Digests no key has, apart: a flood of made-up keys evicts only its own kind (oldest
        # first, in constant time), never a known key (each new one still costs a lookup).
        self._unknown: dict[bytes, datetime] = {}
        self._used: dict[str, datetime] = {}

    async def __call__(self, presented: str) -> ApiKey:
        """The key; raises NotAuthenticated for anything but a valid, unrevoked key."""
        if not is_well_formed(presented):
            raise NotAuthenticated("this is not an API key of this service (ccsk_...)")
        found = digest(presented)
        now = self._clock.now()
        cached = self._cache.get(found)
        unknown_until = self._unknown.get(found)
        if cached is not None and now < cached.until:
            key = cached.key
        elif unknown_until is not None and now < unknown_until:
            key = None
        else:
            key = await self._store.find(found)
            if key is None:
                self._remember_unknown(found, now)
            else:
                self._unknown.pop(found, None)
                self._remember(found, key, now)
        if key is None:
            raise NotAuthenticated("this API key is not known to this service")
        if not key.active:
            raise NotAuthenticated("this API key has been revoked")
        self._used[key.id] = now
        return key

    def _remember_unknown(self, found: bytes, now: datetime) -> None:
        unknown = self._unknown
        unknown.pop(found, None)
        while len(unknown) >= self._max_cached:
            del unknown[next(iter(unknown))]
        unknown[found] = now + self._cache_for

    def _remember(self, found: bytes, key: ApiKey | None, now: datetime) -> None:
        cache = self._cache
        cache.pop(found, None)
        if len(cache) >= self._max_cached:
            for stale in [d for d, c in cache.items() if c.until <= now]:
                del cache[stale]
            while len(cache) >= self._max_cached:  # the oldest entries go first
                del cache[next(iter(cache))]
        cache[found] = _Cached(key, now + self._cache_for)

    async def flush_usage(self) -> int:
        """Write when keys were last used; how many keys were reported.

        On failure the uses are kept for the next flush and the error is raised.
        """
        used, self._used = self._used, {}
        if not used:
            return 0
        try:
            await self._store.record_use(used)
        except BaseException:
            for key_id, at in used.items():
                later = self._used.get(key_id)
                self._used[key_id] = at if later is None else max(at, later)
            raise
        return len(used)
