"""LISTEN for change doorbells on a dedicated connection, and keep listening across outages."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

import psycopg
import structlog

CHANNEL = "calendly_changes"
log = structlog.get_logger(__name__)

# (kind, user_id) for a change; (None, None) after (re)connecting: everyone should re-query.
Doorbell = Callable[[str | None, str | None], Awaitable[None] | None]


class PostgresChangeListener:
    """Calls `ring(kind, user_id)` for every notification on the channel.

    Notifications are only doorbells; after the listening connection drops, anything sent
    meanwhile is lost, so `ring(None, None)` tells subscribers to re-query from their cursor.
    """

    def __init__(
        self,
        conninfo: str,
        ring: Doorbell,
        *,
        runtime_role: str | None = None,
        max_backoff: float = 5.0,
    ) -> None:
        self._conninfo = conninfo
        self._ring = ring
        self._role = runtime_role
        self._max_backoff = max_backoff
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[object] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="postgres-change-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            await self._conn.close()

    async def backend_pid(self) -> int | None:
        """The server process of the listening connection (tests terminate it)."""
        return self._conn.info.backend_pid if self._conn is not None else None

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    self._conn = conn
                    if self._role:
                        await conn.execute(
                            psycopg.sql.SQL("SET ROLE {}").format(
                                psycopg.sql.Identifier(self._role)
                            )
                        )
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    delay = 0.1
                    await self._call(None, None)  # catch up on whatever was missed
                    async for note in conn.notifies():
                        kind, _, user_id = note.payload.partition(":")
                        await self._call(kind, user_id)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.warning("live.listener_lost", error=type(exc).__name__, retry_in=delay)
            self.connected.clear()
            self._conn = None
            await asyncio.sleep(delay * (1 + random.random() / 2))
            delay = min(delay * 2, self._max_backoff)

    async def _call(self, kind: str | None, user_id: str | None) -> None:
        result = self._ring(kind, user_id)
        if result is not None:
            await result
