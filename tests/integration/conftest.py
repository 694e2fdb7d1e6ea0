"""Postgres units of work, the fake for contract tests, the core and workers on real adapters."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg_pool
import pytest

from adapters.crypto import AesGcmTokenCipher
from adapters.postgres.pool import make_pool
from adapters.postgres.unit_of_work import unit_of_work_factory
from domain.ports import UnitOfWorkFactory
from entrypoints.service.worker import Worker
from tests.fakes.storage import FakeDatabase
from tests.support.postgres import RUNTIME_ROLE
from tests.support.real_core import RealCore, real_core, two_workers
from tests.support.sandbox import SandboxDriver

Pool = psycopg_pool.AsyncConnectionPool[Any]


@pytest.fixture
def cipher() -> AesGcmTokenCipher:
    return AesGcmTokenCipher({"k1": os.urandom(32)}, "k1")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    """A pool acting as the runtime role, as the service runs."""
    pool = make_pool(database_url, runtime_role=RUNTIME_ROLE, min_size=1, max_size=4)
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def pg_uow(pool: Pool, cipher: AesGcmTokenCipher) -> UnitOfWorkFactory:
    return unit_of_work_factory(pool, cipher)


@pytest.fixture(params=["fake", "postgres"])
def any_uow(request: pytest.FixtureRequest) -> UnitOfWorkFactory:
    """Contract tests run once against the fake and once against Postgres."""
    if request.param == "fake":
        return FakeDatabase().factory()
    make: Callable[[], UnitOfWorkFactory] = lambda: request.getfixturevalue("pg_uow")  # noqa: E731
    return make()


@pytest.fixture
async def real(sandbox: SandboxDriver, pool: Pool, database_url: str) -> AsyncIterator[RealCore]:
    async with real_core(sandbox, pool, database_url) as core:
        yield core


@pytest.fixture
async def workers(real: RealCore) -> AsyncIterator[tuple[Worker, Worker]]:
    async with two_workers(real) as pair:
        yield pair
