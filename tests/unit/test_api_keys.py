"""API keys over a fake store: their shape, the cache that spares Postgres, revocation, usage."""

from __future__ import annotations

import hashlib

import pytest

from adapters.system import SecretsRandomness
from domain.api_keys import (
    KEY_PREFIX,
    ApiKeyScope,
    digest,
    is_well_formed,
    name_problem,
    prefix_in,
)
from domain.errors import ApiKeyNotFound, ConcurrentUpdate, NotAuthenticated, StorageUnavailable
from domain.usecases.api_keys import (
    CACHE_SECONDS,
    AuthenticateApiKey,
    CreateApiKey,
    RevokeApiKey,
)
from tests.fakes.clock import CountingRandomness, FixedClock
from tests.fakes.storage import FakeApiKeyStore


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def store() -> FakeApiKeyStore:
    return FakeApiKeyStore()


@pytest.fixture
def create(store: FakeApiKeyStore, clock: FixedClock) -> CreateApiKey:
    return CreateApiKey(store, clock, SecretsRandomness())


async def test_a_new_key_is_shown_once_and_stored_only_as_its_digest(
    create: CreateApiKey, store: FakeApiKeyStore
) -> None:
    created = await create("billing", ApiKeyScope.WRITE)

    secret = created.secret.reveal()
    assert secret.startswith(KEY_PREFIX)
    assert len(secret) - len(KEY_PREFIX) >= 43  # 32 random bytes, base64url
    assert is_well_formed(secret)
    assert created.key.prefix == secret[5:13]
    assert created.key.shown == secret[:13]
    assert store.keys == {hashlib.sha256(secret.encode()).digest(): created.key}
    assert secret not in repr(created)


@pytest.mark.parametrize(
    ("name", "problem"),
    [("", "empty"), ("   ", "empty"), ("n" * 101, "at most 100"), ("a\nb", "control")],
)
async def test_a_bad_name_is_refused(create: CreateApiKey, name: str, problem: str) -> None:
    said = name_problem(name)
    assert said is not None
    assert problem in said
    with pytest.raises(ValueError, match=problem):
        await create(name, ApiKeyScope.READ)


async def test_a_taken_prefix_is_drawn_again(store: FakeApiKeyStore, clock: FixedClock) -> None:
    class Repeating(SecretsRandomness):
        """The same key twice, then fresh ones."""

        def __init__(self) -> None:
            self.drawn = 0

        def token(self, nbytes: int = 32) -> str:
            self.drawn += 1
            return "A" * 43 if self.drawn <= 2 else super().token(nbytes)

    random = Repeating()
    create = CreateApiKey(store, clock, random)
    first = await create("one", ApiKeyScope.READ)
    second = await create("two", ApiKeyScope.READ)

    assert first.key.prefix != second.key.prefix
    assert random.drawn == 3


async def test_a_randomness_that_keeps_colliding_gives_up(
    store: FakeApiKeyStore, clock: FixedClock
) -> None:
    class Stuck(SecretsRandomness):
        def token(self, nbytes: int = 32) -> str:
            return "B" * 43

    create = CreateApiKey(store, clock, Stuck())
    await create("one", ApiKeyScope.READ)
    with pytest.raises(ConcurrentUpdate):
        await create("two", ApiKeyScope.READ)


async def test_keys_must_carry_32_random_bytes(store: FakeApiKeyStore, clock: FixedClock) -> None:
    # CountingRandomness makes short readable tokens: never a key.
    with pytest.raises(RuntimeError):
        await CreateApiKey(store, clock, CountingRandomness())("x", ApiKeyScope.READ)
    assert not is_well_formed(KEY_PREFIX + "A" * 42)
    assert is_well_formed(KEY_PREFIX + "A" * 43)


def test_scopes() -> None:
    assert ApiKeyScope.WRITE.allows(ApiKeyScope.READ)
    assert ApiKeyScope.WRITE.allows(ApiKeyScope.WRITE)
    assert ApiKeyScope.READ.allows(ApiKeyScope.READ)
    assert not ApiKeyScope.READ.allows(ApiKeyScope.WRITE)


def test_references_to_a_prefix() -> None:
    assert prefix_in("ccsk_AbCdEfGh") == "AbCdEfGh"
    assert prefix_in("AbCdEfGh") == "AbCdEfGh"
    assert prefix_in("AbCdEfG") is None
    assert prefix_in("ccsk_AbCdEfGhi") is None


@pytest.mark.parametrize("how", ["id", "prefix", "bare-prefix", "key"])
async def test_a_key_is_revoked_by_id_prefix_or_itself(
    create: CreateApiKey, store: FakeApiKeyStore, clock: FixedClock, how: str
) -> None:
    created = await create("billing", ApiKeyScope.READ)
    reference = {
        "id": created.key.id,
        "prefix": created.key.shown,
        "bare-prefix": created.key.prefix,
        "key": created.secret.reveal(),
    }[how]

    revoked = await RevokeApiKey(store, clock)(reference)
    again = await RevokeApiKey(store, clock)(reference)

    assert revoked.key.revoked_at == clock.now()
    assert revoked.already_revoked is False
    assert again.already_revoked is True
    assert again.key.revoked_at == clock.now()


@pytest.mark.parametrize(
    "reference", ["ccsk_Nowhere1", "00000000-0000-0000-0000-000000000000", "x", ""]
)
async def test_revoking_an_unknown_key_says_so(
    store: FakeApiKeyStore, clock: FixedClock, reference: str
) -> None:
    with pytest.raises(ApiKeyNotFound):
        await RevokeApiKey(store, clock)(reference)


async def test_what_was_found_is_trusted_for_the_cache_period_only(
    create: CreateApiKey, store: FakeApiKeyStore, clock: FixedClock
) -> None:
    created = await create("billing", ApiKeyScope.READ)
    authenticate = AuthenticateApiKey(store, clock)
    secret = created.secret.reveal()

    for _ in range(10):
        assert (await authenticate(secret)).id == created.key.id
    assert store.lookups == 1
    await RevokeApiKey(store, clock)(created.key.id)
    clock.advance(CACHE_SECONDS - 0.001)
    await authenticate(secret)  # still cached
    clock.advance(0.001)

    with pytest.raises(NotAuthenticated, match="revoked"):
        await authenticate(secret)
    assert store.lookups == 2
    assert CACHE_SECONDS <= 5


async def test_an_unknown_key_is_remembered_too(store: FakeApiKeyStore, clock: FixedClock) -> None:
    authenticate = AuthenticateApiKey(store, clock)
    for _ in range(5):
        with pytest.raises(NotAuthenticated, match="not known"):
            await authenticate(KEY_PREFIX + "Z" * 43)
    assert store.lookups == 1


async def test_a_malformed_key_costs_no_lookup(store: FakeApiKeyStore, clock: FixedClock) -> None:
    authenticate = AuthenticateApiKey(store, clock)
    for presented in ("ccsk_", "ccsk_" + "é" * 43, "Bearer", "x" * 8000):
        with pytest.raises(NotAuthenticated):
            await authenticate(presented)
    assert store.lookups == 0


async def test_the_cache_keeps_within_its_bound(
    create: CreateApiKey, store: FakeApiKeyStore, clock: FixedClock
) -> None:
    created = await create("billing", ApiKeyScope.READ)
    authenticate = AuthenticateApiKey(store, clock, max_cached=3)
    await authenticate(created.secret.reveal())
    for n in range(10):
        with pytest.raises(NotAuthenticated):
            await authenticate(KEY_PREFIX + f"{n:043d}")

    assert len(authenticate._cache) <= 3
    assert len(authenticate._unknown) <= 3
    # A flood of made-up keys never pushes a known key out of the cache.
    await authenticate(created.secret.reveal())
    assert store.lookups == 11


async def test_lookups_go_by_digest(create: CreateApiKey, store: FakeApiKeyStore) -> None:
    created = await create("billing", ApiKeyScope.READ)
    assert await store.find(digest(created.secret.reveal())) == created.key


async def test_use_is_written_by_the_flush_at_most_once_a_minute(
    create: CreateApiKey, store: FakeApiKeyStore, clock: FixedClock
) -> None:
    created = await create("billing", ApiKeyScope.READ)
    authenticate = AuthenticateApiKey(store, clock)
    await authenticate(created.secret.reveal())
    assert store.uses == []

    assert await authenticate.flush_usage() == 1
    first = clock.now()
    clock.advance(30)
    await authenticate(created.secret.reveal())
    await authenticate.flush_usage()
    assert (await store.all())[0].last_used_at == first  # within the minute: not written
    clock.advance(30)
    await authenticate(created.secret.reveal())
    await authenticate.flush_usage()

    assert (await store.all())[0].last_used_at == clock.now()
    assert await authenticate.flush_usage() == 0  # nothing new


async def test_a_failed_flush_keeps_the_uses_for_the_next(
    create: CreateApiKey, store: FakeApiKeyStore, clock: FixedClock
) -> None:
    created = await create("billing", ApiKeyScope.READ)
    authenticate = AuthenticateApiKey(store, clock)
    await authenticate(created.secret.reveal())
    store.unavailable = True

    with pytest.raises(StorageUnavailable):
        await authenticate.flush_usage()
    store.unavailable = False

    assert await authenticate.flush_usage() == 1
    assert (await store.all())[0].last_used_at == clock.now()
