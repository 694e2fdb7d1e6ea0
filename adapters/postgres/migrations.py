"""Apply the numbered SQL files in `migrations/`, once each, under an advisory lock.

The files are read from this package's `sql/` folder: in a checkout a link to the top-level
`migrations/` (the source of truth), in an installed wheel the files it carries as package data.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql

from domain.errors import StorageUnavailable

# Any two processes migrating at once serialise on this key ("calendly" in ASCII).
MIGRATION_LOCK_KEY = 0x63616C656E646C79
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def _shipped_directory() -> Path:
    """`sql/` of this package, as importlib.resources finds it (a folder on disk: wheels are
    installed unpacked)."""
    directory = files("adapters.postgres") / "sql"
    if not isinstance(directory, Path):
        raise RuntimeError(f"the migrations are not a folder on disk: {directory}")
    return directory


DEFAULT_DIRECTORY = _shipped_directory()


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


class MigrationError(Exception):
    """A migration file is misnamed or failed to apply; the message says which and why."""


def discover(directory: Path = DEFAULT_DIRECTORY) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    if not found:
        # A package installed without its data, or a checkout whose sql/ link is broken.
        raise MigrationError(f"no migration files in {directory}")
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number")
    return found


async def migrate(
    conninfo: str, runtime_role: str, directory: Path = DEFAULT_DIRECTORY
) -> list[Migration]:
    """Apply what is pending (each file in its own transaction) and grant the runtime role.

    Safe to run from several processes at once: they queue on an advisory lock, and each
    re-reads what is applied after taking it. Returns the migrations this call applied.
    """
    migrations = discover(directory)
    applied_now: list[Migration] = []
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cursor = await conn.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cursor.fetchall()}
            for migration in migrations:
                if migration.version in done:
                    continue
                try:
                    async with conn.transaction():
                        await conn.execute(migration.path.read_text(encoding="utf-8").encode())
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                            (migration.version, migration.name),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"{migration.path.name} failed: {exc.diag.message_primary or exc}"
                    ) from exc
                applied_now.append(migration)
            await grant_runtime_role(conn, runtime_role)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now


async def grant_runtime_role(conn: psycopg.AsyncConnection[object], role: str) -> None:
    """Create the runtime role if needed: it owns nothing, is no superuser, cannot bypass RLS,
    and may only read and write rows. The migrating user becomes a member, to `SET ROLE`."""
    ident = sql.Identifier(role)
    cursor = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    if await cursor.fetchone() is None:
        await conn.execute(
            sql.SQL(
                "CREATE ROLE {} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
            ).format(ident)
        )
    statements = [
        "GRANT {role} TO CURRENT_USER",
        "GRANT USAGE ON SCHEMA public TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
        "REVOKE ALL ON schema_migrations FROM {role}",
        "GRANT SELECT ON schema_migrations TO {role}",
    ]
    for statement in statements:
        await conn.execute(sql.SQL(statement).format(role=ident))


async def pending(conninfo: str, directory: Path = DEFAULT_DIRECTORY) -> list[Migration]:
    """Migrations not applied yet (the table missing means all of them)."""
    migrations = discover(directory)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cursor = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = await cursor.fetchone()
        if row is None or not row[0]:
            return migrations
        cursor = await conn.execute("SELECT version FROM schema_migrations")
        done = {r[0] for r in await cursor.fetchall()}
    return [m for m in migrations if m.version not in done]


async def missing_migrations(
    pool: psycopg_pool.AsyncConnectionPool[Any], expected: Sequence[Migration]
) -> list[Migration]:
    """The `expected` migrations the database has not applied, in one query on the runtime
    role's pool (which may read schema_migrations); later ones the code does not know yet are
    no concern of it. Raises StorageUnavailable when the database does not answer in time."""
    try:
        async with pool.connection(timeout=2.0) as conn:
            cursor = await conn.execute(
                "SELECT coalesce(array_agg(version), '{}') AS versions FROM schema_migrations"
            )
            row = await cursor.fetchone()
    except psycopg.errors.UndefinedTable:
        return list(expected)
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        raise StorageUnavailable("the database does not answer") from exc
    applied = set(_versions(row))
    return [m for m in expected if m.version not in applied]


def _versions(row: object) -> list[int]:
    versions = row.get("versions") if isinstance(row, dict) else None
    return [int(v) for v in versions] if isinstance(versions, list) else []
