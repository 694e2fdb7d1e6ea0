"""Key rotation end to end (`calendly-connect rotate-keys`, DR-38) on a real Postgres as the
runtime role: secrets sealed under k1 are re-sealed under k2 by the command, after which k1 can be
removed and every token, signing key (the webhook routes' copy too) and pending connect still
opens; a second run does nothing; a key the command is not given is reported, nothing lost; and
a token the service writes after the rotation listed its row is never overwritten; rotations
beside refreshes end with everything under the new key; malformed blobs are reported."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from datetime import timedelta
from typing import Any, cast

import msgspec
import psycopg
import psycopg_pool
import pytest

from adapters.crypto import AesGcmTokenCipher
from adapters.postgres.key_rotation import CONNECTIONS_TO_RESEAL, PostgresKeyRotation
from adapters.postgres.unit_of_work import unit_of_work_factory
from domain.model import PendingAuthorization, TokenSet
from domain.secret import Secret
from tests.support.cli import run_cli
from tests.support.connections import T0, add, connection

Pool = psycopg_pool.AsyncConnectionPool[Any]
K1, K2, K3 = (os.urandom(32) for _ in range(3))


def setting(*keys: tuple[str, bytes]) -> str:
    """TOKEN_ENCRYPTION_KEY for `keys`, the first one active."""
    return ",".join(f"{kid}:{base64.urlsafe_b64encode(key).decode()}" for kid, key in keys)


def cipher(*keys: tuple[str, bytes]) -> AesGcmTokenCipher:
    return AesGcmTokenCipher(dict(keys), keys[0][0])


def uuid_of(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


async def seed(pool: Pool, users: int) -> None:
    """`users` connections and one pending connect, sealed under k1."""
    uow = unit_of_work_factory(pool, cipher(("k1", K1)))
    for n in range(users):
        await add(uow, connection(f"user-{n}", n, uuid_of(n + 1)))
    async with uow("user-0") as tx:
        await tx.authorizations.add(
            PendingAuthorization(
                state="state-0",
                user_id="user-0",
                code_verifier=Secret("verifier-0"),
                browser_binding=None,
                created_at=T0,
                expires_at=T0 + timedelta(minutes=10),
            )
        )
        await tx.commit()


def route_key_ids(url: str) -> set[str]:
    with psycopg.connect(url) as admin:
        rows = admin.execute(
            "SELECT convert_from(substring(signing_key_enc from 3 for get_byte(signing_key_enc,"
            " 1)), 'SQL_ASCII') FROM calendly_webhook_routes WHERE signing_key_enc IS NOT NULL"
        ).fetchall()
    return {row[0] for row in rows}


async def rotate(database_url: str, keys: str, *argv: str) -> tuple[int, str, str]:
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": database_url,
        "TOKEN_ENCRYPTION_KEY": keys,
    }
    return await run_cli(environ, "rotate-keys", *argv)


async def test_rotation_re_seals_everything_so_the_old_key_can_be_retired(
    database_url: str, pool: Pool
) -> None:
    await seed(pool, 3)
    both = setting(("k2", K2), ("k1", K1))

    code, out, err = await rotate(database_url, both, "--check")
    assert code == 1
    assert "k1: 10 secret(s) (configured)" in out  # 3 x (2 tokens + 1 signing key) + 1 verifier
    assert "run `calendly-connect rotate-keys`" in err

    code, out, err = await rotate(database_url, both)
    assert code == 0, err
    assert "10 secret(s) re-sealed under key 'k2'" in out
    assert "nothing is sealed under 'k1' any more" in out
    assert route_key_ids(database_url) == {"k2"}  # the routes' copy followed

    # k1 retired: everything opens with k2 alone.
    uow = unit_of_work_factory(pool, cipher(("k2", K2)))
    for n in range(3):
        async with uow(f"user-{n}") as tx:
            stored = await tx.connections.get(f"user-{n}")
            pending = await tx.authorizations.peek("state-0") if n == 0 else None
        assert stored is not None
        assert stored.tokens is not None
        assert stored.tokens.access_token.reveal() == f"at-{n}"
        assert stored.tokens.refresh_token.reveal() == f"rt-{n}"
        assert stored.signing_key == Secret(f"key-{n}")
        if pending is not None:
            assert pending.code_verifier.reveal() == "verifier-0"

    code, out, err = await rotate(database_url, setting(("k2", K2)))  # again: nothing to do
    assert (code, out.splitlines()[0]) == (0, "0 secret(s) re-sealed under key 'k2'"), err
    code, out, _ = await rotate(database_url, setting(("k2", K2)), "--check")
    assert (code, out.strip()) == (0, "k2: 10 secret(s) (active)")


async def test_a_key_it_is_not_given_is_reported_and_nothing_is_lost(
    database_url: str, pool: Pool
) -> None:
    await seed(pool, 2)
    with psycopg.connect(database_url) as admin:
        before = admin.execute(
            "SELECT id, access_token_enc, refresh_token_enc FROM calendar_connections ORDER BY id"
        ).fetchall()

    code, out, err = await rotate(database_url, setting(("k3", K3)))

    assert code == 1
    assert "0 secret(s) re-sealed" in out
    assert "7 secret(s) no configured key opens (7 under 'k1')" in err
    with psycopg.connect(database_url) as admin:
        after = admin.execute(
            "SELECT id, access_token_enc, refresh_token_enc FROM calendar_connections ORDER BY id"
        ).fetchall()
    assert after == before
    code, out, _ = await rotate(database_url, setting(("k3", K3)), "--check")
    assert code == 1
    assert "k1: 7 secret(s) (NOT CONFIGURED)" in out


@pytest.mark.parametrize("value", ["", "k1:short", "not-a-key"])
async def test_a_bad_key_setting_is_refused_before_anything_is_touched(
    database_url: str, value: str
) -> None:
    code, out, err = await rotate(database_url, value)
    assert code == 2
    assert out == ""
    assert "TOKEN_ENCRYPTION_KEY" in err
    assert "Traceback" not in err


async def test_rotations_beside_refreshes_leave_every_secret_under_the_new_key(
    pool: Pool,
) -> None:
    users = 12
    await seed(pool, users)
    service = unit_of_work_factory(pool, cipher(("k2", K2), ("k1", K1)))
    rotation = PostgresKeyRotation(pool, cipher(("k2", K2), ("k1", K1)), "k2")

    async def refresh_all(round_: int) -> None:
        """The worker's refreshes: new single-use tokens for every user, sealed under k2."""
        for n in range(users):
            async with service(f"user-{n}") as tx:
                current = await tx.connections.get(f"user-{n}", for_update=True)
                assert current is not None
                tokens = TokenSet(
                    access_token=Secret(f"at-{n}-{round_}"),
                    refresh_token=Secret(f"rt-{n}-{round_}"),
                    expires_at=T0,
                )
                await tx.connections.save(msgspec.structs.replace(current, tokens=tokens))
                await tx.commit()

    async def rotate_all() -> None:
        after: str | None = None
        while (batch := await rotation.connections_batch(after, 2)).rows:
            after = batch.last
            await asyncio.sleep(0)

    async def writer() -> None:
        for round_ in range(3):
            await refresh_all(round_)

    await asyncio.gather(writer(), rotate_all(), rotate_all())
    await rotate_all()  # what was busy during the race
    await rotation.states_batch(None, 10)  # and the pending connect

    retired = unit_of_work_factory(pool, cipher(("k2", K2)))
    for n in range(users):
        async with retired(f"user-{n}") as tx:
            stored = await tx.connections.get(f"user-{n}")
        assert stored is not None
        assert stored.tokens is not None
        assert stored.tokens.refresh_token.reveal() == f"rt-{n}-2"  # the last one written
    assert set(await rotation.count_by_key()) == {"k2"}


async def test_a_row_the_service_holds_is_left_for_the_next_pass_untouched(
    database_url: str, pool: Pool
) -> None:
    await seed(pool, 2)
    rotation = PostgresKeyRotation(pool, cipher(("k2", K2), ("k1", K1)), "k2")
    service = unit_of_work_factory(pool, cipher(("k2", K2), ("k1", K1)))
    async with service("user-0") as tx:  # the worker is refreshing user-0 meanwhile
        held = await tx.connections.get("user-0", for_update=True)
        assert held is not None
        batch = await rotation.connections_batch(None, 10)
        assert (batch.rows, batch.busy, batch.resealed) == (2, 1, 3)
        await tx.connections.save(
            msgspec.structs.replace(
                held,
                tokens=TokenSet(
                    access_token=Secret("at-new"), refresh_token=Secret("rt-new"), expires_at=T0
                ),
            )
        )
        await tx.commit()
    # The service's save sealed all of user-0's secrets under k2: the next pass has nothing left.
    batch = await rotation.connections_batch(None, 10)
    assert (batch.rows, batch.busy, batch.resealed) == (0, 0, 0)
    async with unit_of_work_factory(pool, cipher(("k2", K2)))("user-0") as tx:
        stored = await tx.connections.get("user-0")
    assert stored is not None
    assert stored.tokens is not None
    assert stored.tokens.refresh_token.reveal() == "rt-new"


async def test_a_malformed_blob_is_counted_and_reported_never_a_traceback(
    database_url: str, pool: Pool
) -> None:
    await seed(pool, 2)
    with psycopg.connect(database_url) as admin:  # two blobs no cipher wrote
        admin.execute(
            "UPDATE calendar_connections SET access_token_enc = '\\x01'::bytea"
            " WHERE user_id = 'user-0'"
        )
        admin.execute(
            "UPDATE calendar_connections SET refresh_token_enc = '\\x01ff00'::bytea"
            " WHERE user_id = 'user-1'"
        )
    both = setting(("k2", K2), ("k1", K1))
    code, out, err = await rotate(database_url, both, "--check")
    assert code == 1, err
    assert "(malformed): 2 secret(s) (NOT CONFIGURED)" in out
    code, out, err = await rotate(database_url, both)
    assert code == 1
    assert "Traceback" not in err
    assert "5 secret(s) re-sealed under key 'k2'" in out  # all the others
    assert "2 secret(s) no configured key opens (2 under '(malformed)')" in err


class Interleaved:
    """A pool whose connections run `between` once, right after the rotation listed the rows it
    will re-seal and before it locks the first: the service writing meanwhile."""

    def __init__(self, pool: Pool, between: Any) -> None:
        self._pool, self._between = pool, between

    @contextlib.asynccontextmanager
    async def connection(self) -> Any:
        async with self._pool.connection() as conn:
            yield _Hooked(conn, self)

    async def listed(self) -> None:
        between, self._between = self._between, None
        if between is not None:
            await between()


class _Hooked:
    def __init__(self, conn: Any, pool: Interleaved) -> None:
        self._conn, self._pool = conn, pool

    def transaction(self) -> Any:
        return self._conn.transaction()

    def pipeline(self) -> Any:
        return self._conn.pipeline()

    async def execute(self, query: Any, params: Any = None) -> Any:
        cursor = await self._conn.execute(query, params)
        if query is CONNECTIONS_TO_RESEAL:
            await self._pool.listed()
        return cursor


async def test_a_token_the_service_writes_after_the_listing_is_never_overwritten(
    pool: Pool,
) -> None:
    await seed(pool, 2)
    service = unit_of_work_factory(pool, cipher(("k2", K2), ("k1", K1)))

    async def refresh_user_0() -> None:
        async with service("user-0") as tx:
            current = await tx.connections.get("user-0", for_update=True)
            assert current is not None
            tokens = TokenSet(
                access_token=Secret("at-new"), refresh_token=Secret("rt-new"), expires_at=T0
            )
            await tx.connections.save(msgspec.structs.replace(current, tokens=tokens))
            await tx.commit()

    rotation = PostgresKeyRotation(
        cast(Pool, Interleaved(pool, refresh_user_0)), cipher(("k2", K2), ("k1", K1)), "k2"
    )
    batch = await rotation.connections_batch(None, 10)
    assert batch.rows == 2  # user-0 was listed before the service re-sealed it itself
    async with unit_of_work_factory(pool, cipher(("k2", K2)))("user-0") as tx:
        stored = await tx.connections.get("user-0")
    assert stored is not None
    assert stored.tokens is not None
    assert stored.tokens.refresh_token.reveal() == "rt-new"
