"""The server API's keys in Postgres: kept as SHA-256 digests, outside any tenant (DR-30)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec
import psycopg_pool

from domain.api_keys import ApiKey
from domain.errors import StorageUnavailable
from domain.ports import ApiKeyStore

from .unit_of_work import UNAVAILABLE

Pool = psycopg_pool.AsyncConnectionPool[Any]

KEY_COLUMNS = "id::text AS id, name, prefix, scope, created_at, last_used_at, revoked_at"
INSERT_KEY = """
INSERT INTO api_keys (id, name, prefix, key_sha256, scope, created_at)
VALUES (%(id)s, %(name)s, %(prefix)s, %(digest)s, %(scope)s, %(created_at)s)
ON CONFLICT (prefix) DO NOTHING
"""
# A constant column list is formatted in; no input ever is.
ALL_KEYS = f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"  # noqa: S608
FIND_KEY = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_sha256 = %(digest)s"  # noqa: S608
KEY_BY_ID = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = %(id)s::uuid"  # noqa: S608
KEY_BY_PREFIX = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE prefix = %(prefix)s"  # noqa: S608
REVOKE_KEY = f"""
WITH revoked AS (
    UPDATE api_keys SET revoked_at = %(at)s
    WHERE id = %(id)s::uuid AND revoked_at IS NULL
    RETURNING {KEY_COLUMNS}
)
SELECT * FROM revoked
UNION ALL
SELECT {KEY_COLUMNS} FROM api_keys
WHERE id = %(id)s::uuid AND NOT EXISTS (SELECT FROM revoked)
"""  # noqa: S608
# A use less than a minute after the one stored is not written: one write per key and minute
# whatever the number of processes.
RECORD_USE = """
UPDATE api_keys k SET last_used_at = u.at
FROM unnest(%(ids)s::uuid[], %(ats)s::timestamptz[]) AS u (id, at)
WHERE k.id = u.id
  AND (k.last_used_at IS NULL OR k.last_used_at <= u.at - interval '1 minute')
"""


class PostgresApiKeyStore(ApiKeyStore):
    """Short transactions of its own on the pool, with no tenant set (the table's policy)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def _run(self, query: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(query, params)
                return await cursor.fetchall() if cursor.description else []
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database cannot be reached") from exc

    async def _count(self, query: str, params: Mapping[str, Any]) -> int:
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(query, params)
                return int(cursor.rowcount)
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database cannot be reached") from exc

    @staticmethod
    def _keys(rows: list[dict[str, Any]]) -> list[ApiKey]:
        return [msgspec.convert(row, ApiKey) for row in rows]

    async def add(self, key: ApiKey, digest: bytes) -> bool:
        inserted = await self._count(
            INSERT_KEY,
            {
                "id": key.id,
                "name": key.name,
                "prefix": key.prefix,
                "digest": digest,
                "scope": key.scope.value,
                "created_at": key.created_at,
            },
        )
        return inserted == 1

    async def all(self) -> list[ApiKey]:
        return self._keys(await self._run(ALL_KEYS, {}))

    async def find(self, digest: bytes) -> ApiKey | None:
        found = self._keys(await self._run(FIND_KEY, {"digest": digest}))
        return found[0] if found else None

    async def get(self, *, key_id: str | None = None, prefix: str | None = None) -> ApiKey | None:
        if key_id is not None:
            found = self._keys(await self._run(KEY_BY_ID, {"id": key_id}))
        elif prefix is not None:
            found = self._keys(await self._run(KEY_BY_PREFIX, {"prefix": prefix}))
        else:
            return None
        return found[0] if found else None

    async def revoke(self, key_id: str, at: datetime) -> ApiKey | None:
        found = self._keys(await self._run(REVOKE_KEY, {"id": key_id, "at": at}))
        return found[0] if found else None

    async def record_use(self, used: Mapping[str, datetime]) -> None:
        ids = list(used)
        await self._count(RECORD_USE, {"ids": ids, "ats": [used[i] for i in ids]})
