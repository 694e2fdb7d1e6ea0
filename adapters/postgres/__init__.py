"""Postgres adapters: the unit of work, repositories, migrations and pool set-up."""

from .pool import open_pool
from .roles import UnsafeDatabaseRole, check_runtime_role
from .sealing import TokenCipher
from .unit_of_work import PostgresUnitOfWork, unit_of_work_factory

__all__ = [
    "PostgresUnitOfWork",
    "TokenCipher",
    "UnsafeDatabaseRole",
    "check_runtime_role",
    "open_pool",
    "unit_of_work_factory",
]
