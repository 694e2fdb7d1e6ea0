"""The batch writer (DR-61) made where most deployments migrate: a managed Postgres whose
migrating user is no superuser but may create roles (CREATEROLE, as a provider's console gives
its admin user), on a cluster that has no such role yet. `migrate` must make the runtime role
and the batch writer, the migrating user must be able to take the batch writer (on PostgreSQL
16 a role's creator gets ADMIN without SET), and webhook batches must then write their rounds
with the batch statement, no fallback.

This module owns an embedded Postgres: the session's shared cluster made the role already,
as a superuser."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import pytest
from psycopg import sql

from adapters.crypto import AesGcmTokenCipher
from adapters.postgres.group_commit import PostgresDeliveryLedger
from adapters.postgres.migrations import migrate
from adapters.postgres.pool import make_pool
from adapters.postgres.roles import (
    BATCH_WRITER_POLICY,
    BATCH_WRITER_ROLE,
    BATCH_WRITER_TABLES,
    batch_writer_trouble,
)
from adapters.postgres.unit_of_work import unit_of_work_factory
from adapters.postgres.webhook_events import RECORD_AND_APPLY_BATCH
from domain.usecases.handle_webhook_event import UnitOfWorkLedger
from tests.support.ledger_records import connected, delivery
from tests.support.postgres import RUNTIME_ROLE, PgCluster, as_role
from tests.support.statements import sent_statements

Pool = psycopg_pool.AsyncConnectionPool[Any]
MIGRATOR = "cc_console_admin"


@pytest.fixture(scope="module")
def fresh_cluster() -> Iterator[str]:
    """A new embedded cluster with a CREATEROLE (not superuser) user owning a new database;
    that user's URL on it. Neither the runtime role nor the batch writer exists yet."""
    # A dev dependency (requirements.lock): missing, this fails instead of skipping.
    from pgserver import get_server  # type: ignore[attr-defined]

    # Not under pytest's base temp (see tests/faults/conftest.py: the `pgserver` user).
    workdir = Path(tempfile.mkdtemp(prefix="calendly-connect-provisioning-"))
    workdir.chmod(0o755)
    server = get_server(workdir / "pgdata", cleanup_mode="stop")
    try:
        admin_url = server.get_uri()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            roles = admin.execute(
                "SELECT rolname FROM pg_roles WHERE rolname IN (%s, %s)",
                (BATCH_WRITER_ROLE, RUNTIME_ROLE),
            ).fetchall()
            assert roles == [], "a fresh cluster has neither role"
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS CREATEROLE").format(
                    sql.Identifier(MIGRATOR)
                )
            )
            admin.execute(sql.SQL("CREATE DATABASE app OWNER {}").format(sql.Identifier(MIGRATOR)))
        yield as_role(PgCluster(admin_url=admin_url).url_for("app"), MIGRATOR)
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def migrated(fresh_cluster: str) -> str:
    warnings: list[str] = []
    asyncio.run(migrate(fresh_cluster, RUNTIME_ROLE, warn=warnings.append))
    assert warnings == []
    return fresh_cluster


@pytest.fixture
async def runtime_pool(migrated: str) -> AsyncIterator[Pool]:
    async with make_pool(migrated, runtime_role=RUNTIME_ROLE, max_size=2) as pool:
        yield pool


def test_a_createrole_user_makes_a_batch_writer_bound_by_rls(migrated: str) -> None:
    with psycopg.connect(migrated, autocommit=True) as conn:
        flags = conn.execute(
            "SELECT rolsuper, rolbypassrls, rolcanlogin, rolinherit FROM pg_roles"
            " WHERE rolname = %s",
            (BATCH_WRITER_ROLE,),
        ).fetchone()
        assert flags == (False, False, False, False)
        policies = conn.execute(
            "SELECT tablename FROM pg_policies WHERE policyname = %s AND %s = ANY (roles)",
            (BATCH_WRITER_POLICY, BATCH_WRITER_ROLE),
        ).fetchall()
        assert sorted(t for (t,) in policies) == sorted(BATCH_WRITER_TABLES)
        # No sequence for it (the change log's identity needs none); every one for the runtime
        # role (the workers' bigserial tables draw from theirs).
        assert sequences_of(conn, BATCH_WRITER_ROLE) == []
        assert "webhook_outages_id_seq" in sequences_of(conn, RUNTIME_ROLE)
        # The migrating user may take it, and does not gain its rights without taking it.
        taken = conn.execute(
            "SELECT pg_has_role(current_user, %s, 'SET'), pg_has_role(current_user, %s, 'USAGE')",
            (BATCH_WRITER_ROLE, BATCH_WRITER_ROLE),
        ).fetchone()
        modern = conn.info.server_version >= 160000
    # On 15 membership is all there is: the member has the role's rights, none of which the
    # owner of the tables lacks. (Not run here: pgserver's Postgres is 16.)
    assert taken == ((True, False) if modern else (True, True))


def sequences_of(conn: psycopg.Connection[Any], role: str) -> list[str]:
    """The sequences `role` may use, read or advance in any way."""
    rows = conn.execute(
        "SELECT relname FROM pg_class WHERE relkind = 'S' AND CASE WHEN relkind = 'S'"
        " THEN has_sequence_privilege(%s, oid, 'USAGE, SELECT, UPDATE') END ORDER BY relname",
        (role,),
    ).fetchall()
    return [name for (name,) in rows]


def test_migrating_again_takes_back_what_the_first_version_granted(migrated: str) -> None:
    """The first version of the batch writer had every sequence of the schema."""
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(
                sql.Identifier(BATCH_WRITER_ROLE)
            )
        )
        assert sequences_of(conn, BATCH_WRITER_ROLE) != []
    asyncio.run(migrate(migrated, RUNTIME_ROLE))
    with psycopg.connect(migrated, autocommit=True) as conn:
        assert sequences_of(conn, BATCH_WRITER_ROLE) == []


async def test_batches_then_write_their_rounds_with_the_batch_statement(
    runtime_pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await batch_writer_trouble(runtime_pool) is None
    cipher = AesGcmTokenCipher({"k1": b"k" * 32}, "k1")
    uow = unit_of_work_factory(runtime_pool, cipher)
    await connected(uow)
    sent = sent_statements(monkeypatch)
    ledger = PostgresDeliveryLedger(runtime_pool, cipher, UnitOfWorkLedger(uow), max_running=1)
    batch = [delivery("ada", 1, 1), delivery("bob", 1, 1), delivery("cy", 1, 1)]
    assert await asyncio.gather(*(ledger.record(d) for d in batch)) == [True, True, True]
    assert sent.count(RECORD_AND_APPLY_BATCH) == 1
    assert ledger.fallbacks == 0
