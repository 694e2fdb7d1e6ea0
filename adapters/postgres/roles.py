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
    """Raise UnsafeDatabaseRole unless the pool's role is bound by row-level security."""
    async with pool.connection() as conn:
        flags = await role_flags(conn)
        await conn.rollback()
    assert flags is not None  # the role the session acts as exists
    problems = flags.problems()
    if problems:
        raise UnsafeDatabaseRole(
            f"the database role {flags.name!r} {' and '.join(problems)}: row-level security "
            "would not protect tenants. Set DATABASE_RUNTIME_ROLE to a role that owns nothing "
            f"(the migrator creates {DEFAULT_RUNTIME_ROLE!r})."
        )
    return flags.name
