"""Migration 0004 run by an owner that is neither superuser nor BYPASSRLS (managed Postgres).

Row-level security is forced on the owner too, so a backfill that forgets to lift it updates
nothing, silently: every route would lose its signing key and every delivery to a
connection's own URL would be refused (401) until Calendly disabled the subscription.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from adapters.postgres.migrations import DEFAULT_DIRECTORY, migrate
from tests.support.postgres import RUNTIME_ROLE, PgCluster, as_role

HARDENING = "0004_hardening.sql"
CID = str(uuid.uuid4())


@pytest.fixture
async def owned_before_hardening(
    pg_cluster: PgCluster, tmp_path: Path
) -> AsyncIterator[tuple[str, str]]:
    """(admin URL, owner URL) of a database its plain owner migrated up to 0004, not included."""
    if "://" not in pg_cluster.admin_url:
        pytest.fail(
            "this test builds a login URL for a second role: give TEST_DATABASE_URL as a URL"
        )
    folder = tmp_path / "migrations"
    folder.mkdir()
    for path in sorted(DEFAULT_DIRECTORY.glob("*.sql")):
        if path.name < HARDENING:
            shutil.copy(path, folder / path.name)
    suffix = uuid.uuid4().hex[:8]
    role, name = f"cc_owner_{suffix}", f"cc_owned_{suffix}"
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS CREATEROLE").format(
                sql.Identifier(role)
            )
        )
        # As a provider's console would: the runtime role exists and the owner may manage it.
        admin.execute(
            sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                sql.Identifier(RUNTIME_ROLE), sql.Identifier(role)
            )
        )
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(role)
            )
        )
    admin_url = pg_cluster.url_for(name)
    owner_url = as_role(admin_url, role)
    try:
        await migrate(owner_url, RUNTIME_ROLE, folder)
        yield admin_url, owner_url
    finally:
        pg_cluster.drop(name)
        with psycopg.connect(pg_cluster.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


async def test_a_plain_owner_backfills_every_route_key_and_clamps_stored_times(
    owned_before_hardening: tuple[str, str],
) -> None:
    admin_url, owner_url = owned_before_hardening
    with psycopg.connect(owner_url) as owner:  # one transaction, as tenant "a"
        owner.execute("SELECT set_config('app.user_id', 'a', true)")
        owner.execute(
            "INSERT INTO calendar_connections (id, user_id, status, calendly_user_uri,"
            " access_token_enc, refresh_token_enc, webhook_signing_key_enc, webhook_token)"
            " VALUES (%s, 'a', 'active', 'https://api.calendly.test/users/a', 'at', 'rt',"
            " 'sealed-key', 'token-a-0123456789')",
            (CID,),
        )
        owner.execute(
            "INSERT INTO meetings (user_id, connection_id, event_uri, status, start_time,"
            " end_time) VALUES ('a', %s, 'https://e/1', 'active', 'infinity', '-infinity')",
            (CID,),
        )

    warnings: list[str] = []
    applied = await migrate(owner_url, RUNTIME_ROLE, warn=warnings.append)
    assert HARDENING in [m.path.name for m in applied]
    # The batch writer (DR-61) is the cluster's. On 16 a plain owner may not take one another
    # user made (then the service writes one statement per delivery, and says so); on 15 any
    # CREATEROLE user may grant itself a role that is no superuser's, and does.
    with psycopg.connect(admin_url) as admin:
        modern = admin.info.server_version >= 160000
    if modern:
        assert warnings
        assert all("calendly_batch_writer" in w for w in warnings)
    else:
        assert warnings == []

    with psycopg.connect(admin_url) as admin:
        admin.execute("SET TIME ZONE 'UTC'")
        routes = admin.execute(
            "SELECT webhook_token, signing_key_enc FROM calendly_webhook_routes"
        ).fetchall()
        times = admin.execute("SELECT start_time::text, end_time::text FROM meetings").fetchall()
        forced = admin.execute(
            "SELECT relname FROM pg_class WHERE relforcerowsecurity"
            " AND relname IN ('calendar_connections', 'calendly_webhook_routes', 'meetings')"
            " ORDER BY relname"
        ).fetchall()
    assert routes == [("token-a-0123456789", b"sealed-key")]
    assert times == [("9999-12-31 23:59:59.999999+00", "0001-01-01 00:00:00+00")]
    # Forced again afterwards.
    assert forced == [("calendar_connections",), ("calendly_webhook_routes",), ("meetings",)]
