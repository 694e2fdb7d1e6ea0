"""What the operator commands that act as the runtime role share: the database settings, and a
small pool that says plainly when it cannot be had."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import psycopg_pool

from adapters.postgres.pool import make_pool
from domain.errors import StorageUnavailable
from entrypoints.arguments import fail
from entrypoints.settings import ConfigError, DatabaseSettings, load_database_settings

# How long a command waits for the database before it says it cannot reach it.
CONNECT_SECONDS: Final = 10


def database_settings(environ: Mapping[str, str]) -> DatabaseSettings | None:
    """DATABASE_URL and DATABASE_RUNTIME_ROLE; None after saying on stderr what is wrong."""
    try:
        return load_database_settings(environ)
    except ConfigError as exc:
        for problem in exc.problems:
            fail(problem)
        return None


@asynccontextmanager
async def runtime_pool(
    database: DatabaseSettings,
) -> AsyncIterator[psycopg_pool.AsyncConnectionPool[Any]]:
    """One connection acting as the runtime role; StorageUnavailable saying what to check."""
    pool = make_pool(
        database.url.reveal(), runtime_role=database.runtime_role, min_size=1, max_size=1
    )
    try:
        await pool.open(wait=True, timeout=CONNECT_SECONDS)
    except psycopg_pool.PoolTimeout as exc:
        raise StorageUnavailable(
            f"cannot reach the database as the runtime role {database.runtime_role!r}: check "
            "DATABASE_URL, DATABASE_RUNTIME_ROLE and that `calendly-connect migrate` has run"
        ) from exc
    try:
        yield pool
    finally:
        await pool.close()
