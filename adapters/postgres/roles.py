"""The runtime role's check: row-level security must bind it, or the service refuses to start."""

from __future__ import annotations

import psycopg_pool

from .pool import Connection


class UnsafeDatabaseRole(Exception):
    """The runtime role could bypass row-level security; the service refuses to start."""


CHECK_ROLE = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls,
       (SELECT count(*) FROM pg_class c
         WHERE c.relowner = r.oid AND c.relkind IN ('r', 'p')
           AND c.relnamespace = 'public'::regnamespace) AS owned_tables
FROM pg_roles r WHERE r.rolname = current_user
"""


async def check_runtime_role(pool: psycopg_pool.AsyncConnectionPool[Connection]) -> str:
    """Raise UnsafeDatabaseRole unless the pool's role is bound by row-level security."""
    async with pool.connection() as conn:
        cursor = await conn.execute(CHECK_ROLE)
        row = await cursor.fetchone()
        await conn.rollback()
    assert row is not None
    problems = []
    if row["rolsuper"]:
        problems.append("is a superuser")
    if row["rolbypassrls"]:
        problems.append("has BYPASSRLS")
    if row["owned_tables"]:
        problems.append(f"owns {row['owned_tables']} tables")
    if problems:
        raise UnsafeDatabaseRole(
            f"the database role {row['rolname']!r} {' and '.join(problems)}: row-level security "
            "would not protect tenants. Set DATABASE_RUNTIME_ROLE to a role that owns nothing "
            "(the migrator creates 'calendly_app')."
        )
    return str(row["rolname"])
