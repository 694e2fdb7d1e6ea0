"""Apply the numbered SQL files in `migrations/`, once each, under an advisory lock.

The files are read from this package's `sql/` folder: in a checkout a link to the top-level
`migrations/` (the source of truth), in an installed wheel the files it carries as package data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql

from domain.errors import StorageUnavailable

from .roles import BATCH_WRITER_POLICY, BATCH_WRITER_ROLE, BATCH_WRITER_TABLES

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
    conninfo: str,
    runtime_role: str,
    directory: Path = DEFAULT_DIRECTORY,
    *,
    warn: Callable[[str], None] | None = None,
) -> list[Migration]:
    """Apply what is pending (each file in its own transaction), grant the runtime role and
    make the batch writer (`grant_batch_writer`; what stands in its way is passed to `warn`).

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
            if (trouble := await grant_batch_writer(conn)) is not None and warn is not None:
                warn(trouble)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now


async def grant_runtime_role(conn: psycopg.AsyncConnection[object], role: str) -> None:
    """Create the runtime role if needed: it owns nothing, is no superuser, cannot bypass RLS,
    and may only read and write rows. The migrating user becomes a member, to `SET ROLE`."""
    ident = sql.Identifier(role)
    if not await _role_exists(conn, role):
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


async def grant_batch_writer(conn: psycopg.AsyncConnection[object]) -> str | None:
    """Make the role webhook batches take (DR-61), give it what a batch reads and writes and a
    policy per table that admits the batch's users only, and let the migrating user take it
    (SET ROLE only: on PostgreSQL 16 it does not inherit its rights). All or nothing; None, or
    why not (a user that may not create roles, or not take one made by another): the service
    then writes each delivery by its own statement, as before."""
    role = sql.Identifier(BATCH_WRITER_ROLE)
    try:
        async with conn.transaction():
            if not await _role_exists(conn, BATCH_WRITER_ROLE):
                try:
                    async with conn.transaction():  # another database's migrate may race us
                        await conn.execute(
                            sql.SQL(
                                "CREATE ROLE {} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB"
                                " NOCREATEROLE NOINHERIT"
                            ).format(role)
                        )
                except psycopg.errors.DuplicateObject:
                    pass  # made meanwhile: as good
            # On 16 a role's creator is its member with ADMIN only (no SET): take SET, without
            # inheriting; 15 knows membership alone.
            modern = conn.info.server_version >= 160000
            taken = await _answer(
                conn,
                "SELECT pg_has_role(current_user, %s, %s)",
                BATCH_WRITER_ROLE,
                "SET" if modern else "MEMBER",
            )
            if not taken:
                grant = "GRANT {} TO CURRENT_USER"
                if modern:
                    grant += " WITH INHERIT FALSE, SET TRUE"
                await conn.execute(sql.SQL(grant).format(role))
            tables = sql.SQL(", ").join(map(sql.Identifier, BATCH_WRITER_TABLES))
            for statement in (
                "GRANT USAGE ON SCHEMA public TO {role}",
                # What a batch reads: the routes (to check them, DR-60), the watchers (DR-57).
                "GRANT SELECT ON calendly_webhook_routes, live_watchers TO {role}",
                "GRANT SELECT, INSERT, UPDATE ON {tables} TO {role}",
                # Deliveries are only added (a copy inserts nothing).
                "REVOKE UPDATE ON calendly_webhook_events FROM {role}",
                # No sequence: the only one behind what it writes is the change log's identity,
                # which Postgres draws from without checking rights. Earlier versions granted
                # every sequence of the schema: taken back on every run.
                "REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}",
            ):
                await conn.execute(sql.SQL(statement).format(role=role, tables=tables))
            for table in BATCH_WRITER_TABLES:
                cursor = await conn.execute(
                    "SELECT FROM pg_policies WHERE schemaname = 'public' AND tablename = %s"
                    " AND policyname = %s",
                    (table, BATCH_WRITER_POLICY),
                )
                if await cursor.fetchone() is None:
                    await conn.execute(
                        sql.SQL(
                            "CREATE POLICY {policy} ON {table} TO {role}"
                            " USING (user_id = ANY (app_batch_users()))"
                            " WITH CHECK (user_id = ANY (app_batch_users()))"
                        ).format(
                            policy=sql.Identifier(BATCH_WRITER_POLICY),
                            table=sql.Identifier(table),
                            role=role,
                        )
                    )
    except psycopg.Error as exc:
        return (
            f"the role {BATCH_WRITER_ROLE!r} is not ready ({exc.diag.message_primary or exc}):"
            " webhook batches will write each delivery by its own statement; see"
            " `calendly-connect doctor`"
        )
    return None


async def _role_exists(conn: psycopg.AsyncConnection[object], role: str) -> bool:
    return bool(
        await _answer(conn, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)", role)
    )


async def _answer(conn: psycopg.AsyncConnection[object], query: str, *params: object) -> object:
    """The first column of `query`'s one row."""
    cursor = await conn.execute(query.encode(), params)
    row = await cursor.fetchone()
    return row[0] if isinstance(row, tuple) else None


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
