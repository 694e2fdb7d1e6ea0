"""Tell the host app about connection changes: a signed POST per outbox row, with retries."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import timedelta
from typing import Any

import aiohttp
import msgspec
import psycopg_pool
import structlog

from domain.secret import Secret

Pool = psycopg_pool.AsyncConnectionPool[Any]
log = structlog.get_logger(__name__)

CLAIM = """
SELECT id, user_id, kind, created_at, attempts FROM host_notifications
WHERE delivered_at IS NULL AND next_attempt_at <= now()
ORDER BY id
FOR UPDATE SKIP LOCKED
LIMIT %(limit)s
"""
DELIVERED = "UPDATE host_notifications SET delivered_at = now() WHERE id = %(id)s"
FAILED = """
UPDATE host_notifications
SET attempts = attempts + 1, last_error = %(error)s, next_attempt_at = now() + %(wait)s
WHERE id = %(id)s
"""
PRUNE = "DELETE FROM host_notifications WHERE created_at < now() - interval '7 days'"


def signature(secret: Secret, timestamp: int, body: bytes) -> str:
    """The same scheme as Calendly's: `t=<unix>,v1=<hex HMAC-SHA256 of "t." + body>`."""
    mac = hmac.new(secret.reveal().encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class HostNotifier:
    """Delivers pending notifications; without a URL it only prunes old ones."""

    def __init__(
        self,
        pool: Pool,
        session: aiohttp.ClientSession,
        url: str | None,
        secret: Secret | None,
        timeout: float = 10.0,
    ) -> None:
        self._pool = pool
        self._session = session
        self._url = url
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def deliver_pending(self, limit: int = 20) -> int:
        """Send what is due; returns how many were delivered."""
        if self._url is None or self._secret is None:
            async with self._pool.connection() as conn:
                await conn.execute(PRUNE)
            return 0
        delivered = 0
        async with self._pool.connection() as conn:
            cursor = await conn.execute(CLAIM, {"limit": limit})
            for row in await cursor.fetchall():
                error = await self._post(row)
                if error is None:
                    await conn.execute(DELIVERED, {"id": row["id"]})
                    delivered += 1
                else:
                    wait = timedelta(seconds=min(3600, 10 * 2 ** min(row["attempts"], 9)))
                    await conn.execute(FAILED, {"id": row["id"], "error": error, "wait": wait})
        return delivered

    async def _post(self, row: dict[str, Any]) -> str | None:
        assert self._url is not None
        assert self._secret is not None
        body = msgspec.json.encode(
            {
                "id": row["id"],
                "type": row["kind"],
                "user_id": row["user_id"],
                "created_at": row["created_at"],
            }
        )
        headers = {
            "Content-Type": "application/json",
            "Calendly-Connect-Signature": signature(self._secret, int(time.time()), body),
        }
        try:
            async with self._session.post(
                self._url, data=body, headers=headers, timeout=self._timeout
            ) as response:
                if 200 <= response.status < 300:
                    return None
                return f"the host app answered {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("host_notification.failed", error=type(exc).__name__)
            return f"{type(exc).__name__}"
