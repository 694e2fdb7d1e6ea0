"""The runtime role: its default name, and the check that row-level security binds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import psycopg
import psycopg_pool

from .pool import Connection

# The role the migrator creates and every pooled connection acts as (SET ROLE), unless
# DATABASE_RUNTIME_ROLE names another: the one place its name is written.
DEFAULT_RUNTIME_ROLE: Final = "calendly_app"
# The role a webhook batch takes for its own transaction, to write many users' deliveries with
# one statement (migrations/0019, DR-61): its policies admit only the users the batch named.
BATCH_WRITER_ROLE: Final = "calendly_batch_writer"
# What it writes (its statement and the change log's trigger), each table with a policy of this
# name for it (made by `migrate`, adapters/postgres/migrations.py).
BATCH_WRITER_TABLES: Final = (
    "calendly_webhook_events",
    "meeting_change_users",
    "meetings",
    "meeting_invitees",
    "change_log",
    "change_log_users",
)
BATCH_WRITER_POLICY: Final = "batch_users"
BATCH_WRITER_POLICIES = """
SELECT count(*) AS n FROM pg_policies
WHERE schemaname = 'public' AND policyname = %(policy)s AND %(role)s = ANY (roles)
"""


class UnsafeDatabaseRole(Exception):
    """The runtime role could bypass row-level security; the service refuses to start."""


# `role` NULL means the role the session acts as now (after the pool's SET ROLE).
ROLE_FLAGS = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls,
       (SELECT count(*) FROM pg_class c
         WHERE c.relowner = r.oid AND c.relkind IN ('r', 'p')
           AND c.relnamespace = 'public'::regnamespace) AS owned_tables
FROM pg_roles r WHERE r.rolname = coalesce(%(role)s::text, current_user)
"""


@dataclass(frozen=True)
class RoleFlags:
    """What Postgres says about a role that decides whether row-level security binds it."""

    name: str
    superuser: bool
    bypasses_rls: bool
    owned_tables: int

    @property
    def sees_every_tenant(self) -> bool:
        return self.superuser or self.bypasses_rls

    def problems(self) -> list[str]:
        """Why row-level security would not bind this role; empty when it does."""
        problems = []
        if self.superuser:
            problems.append("is a superuser")
        if self.bypasses_rls:
            problems.append("has BYPASSRLS")
        if self.owned_tables:
            problems.append(f"owns {self.owned_tables} tables")
        return problems


def _flags(row: dict[str, Any] | None) -> RoleFlags | None:
    if row is None:
        return None
    return RoleFlags(
        name=str(row["rolname"]),
        superuser=bool(row["rolsuper"]),
        bypasses_rls=bool(row["rolbypassrls"]),
        owned_tables=int(row["owned_tables"]),
    )


async def role_flags(conn: Connection, role: str | None = None) -> RoleFlags | None:
    """The flags of `role` (None: the role the session acts as); None when no such role."""
    cursor = await conn.execute(ROLE_FLAGS, {"role": role})
    return _flags(await cursor.fetchone())


def role_flags_now(conn: psycopg.Connection[dict[str, Any]], role: str | None) -> RoleFlags | None:
    """`role_flags` on a blocking connection (the doctor's)."""
    return _flags(conn.execute(ROLE_FLAGS, {"role": role}).fetchone())


async def check_runtime_role(pool: psycopg_pool.AsyncConnectionPool[Connection]) -> str:
    """Raise UnsafeDatabaseRole unless the pool's role is bound by row-level security, and
    the batch writer's too (where the migrations made it)."""
    async with pool.connection() as conn:
        flags = await role_flags(conn)
        batch_writer = await role_flags(conn, BATCH_WRITER_ROLE)
        await conn.rollback()
    assert flags is not None  # the role the session acts as exists
    problems = flags.problems()
    if problems:
        raise UnsafeDatabaseRole(
            f"the database role {flags.name!r} {' and '.join(problems)}: row-level security "
            "would not protect tenants. Set DATABASE_RUNTIME_ROLE to a role that owns nothing "
            f"(the migrator creates {DEFAULT_RUNTIME_ROLE!r})."
        )
    problems = [] if batch_writer is None else batch_writer.problems()
    if problems:  # made by hand before the migration (which keeps a role it finds)
        raise UnsafeDatabaseRole(
            f"the database role {BATCH_WRITER_ROLE!r} {' and '.join(problems)}: webhook "
            "batches take it to write many users' deliveries, and row-level security would not "
            "hold them to those users. Make it NOSUPERUSER NOBYPASSRLS, owning nothing."
        )
    return flags.name


async def batch_writer_trouble(pool: psycopg_pool.AsyncConnectionPool[Connection]) -> str | None:
    """Why webhook batches cannot write as the batch writer (DR-61), or None: the role is
    missing, its policies are, or this login may not take it. (One that could bypass
    row-level security is refused by `check_runtime_role`.)"""
    async with pool.connection() as conn:
        if await role_flags(conn, BATCH_WRITER_ROLE) is None:
            await conn.rollback()
            return f"the role {BATCH_WRITER_ROLE!r} does not exist"
        cursor = await conn.execute(
            BATCH_WRITER_POLICIES, {"policy": BATCH_WRITER_POLICY, "role": BATCH_WRITER_ROLE}
        )
        row = await cursor.fetchone()
        await conn.rollback()
        if row is None or int(row["n"]) < len(BATCH_WRITER_TABLES):
            return f"the policies of {BATCH_WRITER_ROLE!r} are missing"
        try:
            await conn.execute("SELECT set_config('role', %s, true)", (BATCH_WRITER_ROLE,))
        except psycopg.Error:
            return f"this login may not SET ROLE {BATCH_WRITER_ROLE}"
        finally:
            await conn.rollback()
    return None
