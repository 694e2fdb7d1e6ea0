"""Key rotation at rest (`calendly-connect rotate-keys`, DR-38): every sealed secret re-sealed
under the active TOKEN_ENCRYPTION_KEY, so an older key can be retired.

Sealed secrets live in `calendar_connections` (access and refresh tokens, the webhook signing
key; the routes' copy of the signing key follows by trigger, migrations/0004) and in
`calendly_oauth_states` (a pending connect's PKCE verifier). A blob names its key (adapters/
crypto.py: version byte, key id length, key id), so what still needs re-sealing is found in SQL.

Safe while the service runs: connections are listed with the host scope (read only), then each
is re-sealed in its owner's tenant under a row lock taken with SKIP LOCKED (a row the service
holds is left for the next pass), from the blobs read under that lock. Only the sealed columns
are written: a token the service wrote meanwhile is already under the active key and is not
listed again. Idempotent and resumable: a run re-seals only what is not under the active key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec
import psycopg_pool
from psycopg import sql

from adapters.crypto import DecryptionFailed
from domain.errors import StorageUnavailable

from .directory import HOST_SCOPE
from .sealing import TokenCipher, secret_context
from .unit_of_work import UNAVAILABLE

Pool = psycopg_pool.AsyncConnectionPool[Any]

# (column, the name its context binds it to) of a connection's sealed secrets.
CONNECTION_SEALED: Final = (
    ("access_token_enc", "access_token"),
    ("refresh_token_enc", "refresh_token"),
    ("webhook_signing_key_enc", "signing_key"),
)


# The key id a blob names, in SQL, for any bytes at all: byte 1 is the id's length, the id
# follows; a blob too short for its header counts as '(malformed)', and an id's bytes are shown
# escaped (`encode(..., 'escape')` never fails), so one bad row cannot stop the count.
COUNT_BY_KEY: Final = """
WITH sealed (blob) AS (
    SELECT access_token_enc FROM calendar_connections WHERE access_token_enc IS NOT NULL
    UNION ALL
    SELECT refresh_token_enc FROM calendar_connections WHERE refresh_token_enc IS NOT NULL
    UNION ALL
    SELECT webhook_signing_key_enc FROM calendar_connections
    WHERE webhook_signing_key_enc IS NOT NULL
    UNION ALL
    SELECT code_verifier_enc FROM calendly_oauth_states
)
SELECT CASE WHEN length(blob) >= 2 AND length(blob) >= 2 + get_byte(blob, 1)
            THEN encode(substring(blob from 3 for get_byte(blob, 1)), 'escape')
            ELSE '(malformed)' END AS key_id,
       count(*) AS sealed
FROM sealed GROUP BY 1 ORDER BY 1
"""
# What is not sealed under the active key: its header (version, id length, id) is not the
# active key's, compared as bytes (no decoding, so no blob can make the query fail).
CONNECTIONS_TO_RESEAL: Final = """
SELECT id::text AS id, user_id FROM calendar_connections
WHERE id > %(after)s::uuid AND (
    substring(access_token_enc from 1 for %(header_length)s) <> %(header)s
    OR substring(refresh_token_enc from 1 for %(header_length)s) <> %(header)s
    OR substring(webhook_signing_key_enc from 1 for %(header_length)s) <> %(header)s)
ORDER BY id LIMIT %(limit)s
"""
ENTER_TENANT: Final = (
    "SELECT set_config('app.scope', '', true), set_config('app.user_id', %(user_id)s, true)"
)
LOCK_CONNECTION: Final = """
SELECT access_token_enc, refresh_token_enc, webhook_signing_key_enc
FROM calendar_connections WHERE id = %(id)s::uuid FOR UPDATE SKIP LOCKED
"""
STATES_TO_RESEAL: Final = """
SELECT state, code_verifier_enc FROM calendly_oauth_states
WHERE substring(code_verifier_enc from 1 for %(header_length)s) <> %(header)s
  AND state > %(after)s
ORDER BY state LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""
UPDATE_STATE: Final = """
UPDATE calendly_oauth_states SET code_verifier_enc = %(blob)s WHERE state = %(state)s
"""
FIRST_UUID: Final = "00000000-0000-0000-0000-000000000000"


class Batch(msgspec.Struct, kw_only=True):
    """What one batch did: rows looked at, secrets re-sealed, rows the service held (left for
    another pass), and secrets no configured key opens (left as they are)."""

    rows: int = 0
    resealed: int = 0
    busy: int = 0
    unreadable: int = 0
    # Where the next batch starts (the last row looked at); None when there was none.
    last: str | None = None


class PostgresKeyRotation:
    def __init__(self, pool: Pool, cipher: TokenCipher, active_key_id: str) -> None:
        self._pool = pool
        self._cipher = cipher
        self._active = active_key_id
        # The active key's blob header (adapters/crypto.py: version 1, id length, id).
        encoded = active_key_id.encode("ascii")
        self._header = bytes([1, len(encoded)]) + encoded

    def _wanted(self) -> dict[str, Any]:
        return {"header": self._header, "header_length": len(self._header)}

    async def count_by_key(self) -> dict[str, int]:
        """How many sealed secrets each key id seals now."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(HOST_SCOPE)
                cursor = await conn.execute(COUNT_BY_KEY)
                return {row["key_id"]: int(row["sealed"]) for row in await cursor.fetchall()}
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc

    def _reseal(self, blob: bytes | None, context: str, batch: Batch) -> bytes | None:
        """`blob` under the active key; unchanged when it already is, or when no key opens it."""
        if blob is None or _blob_key_id(blob) == self._active:
            return blob
        try:
            secret = self._cipher.decrypt(blob, context=context)
        except DecryptionFailed:
            batch.unreadable += 1
            return blob
        batch.resealed += 1
        return self._cipher.encrypt(secret, context=context)

    async def connections_batch(self, after: str | None, limit: int) -> Batch:
        """Re-seal the next `limit` connections (in id order after `after`) holding a secret
        under another key: one transaction, each row in its owner's tenant."""
        batch = Batch()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(HOST_SCOPE)
                cursor = await conn.execute(
                    CONNECTIONS_TO_RESEAL,
                    {"after": after or FIRST_UUID, "limit": limit, **self._wanted()},
                )
                listed = await cursor.fetchall()
                for row in listed:
                    batch.rows += 1
                    batch.last = row["id"]
                    await conn.execute(ENTER_TENANT, {"user_id": row["user_id"]})
                    cursor = await conn.execute(LOCK_CONNECTION, {"id": row["id"]})
                    sealed = await cursor.fetchone()
                    if sealed is None:  # the service holds it (or it went): another pass
                        batch.busy += 1
                        continue
                    values = {
                        column: self._reseal(sealed[column], secret_context(row["id"], name), batch)
                        for column, name in CONNECTION_SEALED
                    }
                    changed = {c: v for c, v in values.items() if v is not sealed[c]}
                    if changed:  # only those columns: the routes' trigger fires on the key's
                        await conn.execute(
                            _update_connection(changed), {"id": row["id"], **changed}
                        )
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc
        return batch

    async def states_batch(self, after: str | None, limit: int) -> Batch:
        """Re-seal the next `limit` pending connects' verifiers under another key."""
        batch = Batch()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    STATES_TO_RESEAL, {"after": after or "", "limit": limit, **self._wanted()}
                )
                for row in await cursor.fetchall():
                    batch.rows += 1
                    batch.last = row["state"]
                    context = f"calendly_oauth_states:{row['state']}"
                    blob = self._reseal(row["code_verifier_enc"], context, batch)
                    if blob is not row["code_verifier_enc"]:
                        await conn.execute(UPDATE_STATE, {"state": row["state"], "blob": blob})
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc
        return batch


def _update_connection(columns: Mapping[str, object]) -> sql.Composed:
    """UPDATE of the given sealed columns of one connection (by %(id)s)."""
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column))
        for column in columns
    )
    return sql.SQL("UPDATE calendar_connections SET {} WHERE id = %(id)s::uuid").format(assignments)


def _blob_key_id(blob: bytes) -> str | None:
    """The key id a blob names (None when it is too short to name one)."""
    if len(blob) < 2 or len(blob) < 2 + blob[1]:
        return None
    return blob[2 : 2 + blob[1]].decode("ascii", "replace")


def total(batches: Sequence[Batch]) -> Batch:
    return Batch(
        rows=sum(b.rows for b in batches),
        resealed=sum(b.resealed for b in batches),
        busy=sum(b.busy for b in batches),
        unreadable=sum(b.unreadable for b in batches),
    )
