"""The connection pool: every connection acts as the runtime role, opened explicitly."""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.rows import dict_row

Connection = psycopg.AsyncConnection[dict[str, Any]]


def _configure(role: str | None) -> Any:
    async def configure(conn: Connection) -> None:
        if role:
            await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        await conn.commit()

    return configure


def make_pool(
    conninfo: str, *, runtime_role: str | None, min_size: int = 1, max_size: int = 10
) -> psycopg_pool.AsyncConnectionPool[Connection]:
    """A closed pool (no I/O here); `await pool.open(wait=True)` starts it."""
    return psycopg_pool.AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"row_factory": dict_row},
        configure=_configure(runtime_role),
        # No check on checkout (it would cost a round trip per use): a connection broken by an
        # outage fails its transaction (503, the caller retries) and is replaced on return.
        timeout=10.0,
        name="calendly-connect",
    )


async def open_pool(
    conninfo: str, *, runtime_role: str | None, min_size: int = 1, max_size: int = 10
) -> psycopg_pool.AsyncConnectionPool[Connection]:
    pool = make_pool(conninfo, runtime_role=runtime_role, min_size=min_size, max_size=max_size)
    await pool.open(wait=True, timeout=30.0)
    return pool


async def ping(pool: psycopg_pool.AsyncConnectionPool[Connection]) -> bool:
    """Whether the database answers a trivial query within the pool's timeout."""
    try:
        async with pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
    except (psycopg.Error, psycopg_pool.PoolTimeout):
        return False
    return True
