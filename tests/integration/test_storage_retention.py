"""Bounded storage (DR-41, migrations/0012) on a real Postgres, as the runtime role: recorded
deliveries older than the retention go (in batches), their dedup keys stay for as long as Calendly
may redeliver, expired OAuth states go after a day's grace, and nothing younger is touched."""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg_pool
import pytest

from adapters.postgres.storage_retention import DEDUP_DAYS, PostgresStorageRetention
from entrypoints.container import Container, resolve
from entrypoints.service.worker import build_worker
from entrypoints.settings import load_settings
from tests.support.postgres import runtime_connection
from tests.support.service import service_environment

Pool = psycopg_pool.AsyncConnectionPool[Any]


def delivery(url: str, event_id: str, days_old: float, *, user: str | None = "alice") -> None:
    """A recorded delivery `days_old` days ago (written as the superuser: its time is set)."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "INSERT INTO calendly_webhook_events (event_id, event_type, outcome, user_id,"
            " payload, raw_payload, created_at)"
            " VALUES (%s, 'invitee.created', 'applied', %s, '{\"event\": 1}', '\\x00',"
            " now() - make_interval(secs => %s))",
            (event_id, user, days_old * 86_400),
        )


def oauth_state(url: str, state: str, expired_days_ago: float) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "INSERT INTO calendly_oauth_states (state, user_id, code_verifier_enc, created_at,"
            " expires_at) VALUES (%s, 'alice', '\\x01', now(), now() - make_interval(secs => %s))",
            (state, expired_days_ago * 86_400),
        )


def deliveries(url: str) -> dict[str, bool]:
    """event_id -> whether its payload is still there."""
    with psycopg.connect(url) as admin:
        rows = admin.execute(
            "SELECT event_id, payload IS NOT NULL OR raw_payload IS NOT NULL"
            " FROM calendly_webhook_events"
        ).fetchall()
    return dict(rows)


def states(url: str) -> set[str]:
    with psycopg.connect(url) as admin:
        return {row[0] for row in admin.execute("SELECT state FROM calendly_oauth_states")}


async def test_old_deliveries_and_expired_states_go_in_batches_the_rest_stays(
    database_url: str, pool: Pool
) -> None:
    for n in range(5):
        delivery(database_url, f"old-{n}", 31 + n)
    delivery(database_url, "unrouted-old", 40, user=None)  # no user: an operator's row
    delivery(database_url, "recent", 29)
    oauth_state(database_url, "long-expired", 2)
    oauth_state(database_url, "just-expired", 0.01)  # its callback may still come: kept
    retention = PostgresStorageRetention(pool, payload_days=30, batch=2)

    done = await retention.prune()

    assert done == {"deliveries_deleted": 6, "payloads_emptied": 0, "oauth_states_deleted": 1}
    assert deliveries(database_url) == {"recent": True}
    assert states(database_url) == {"just-expired"}
    assert await retention.prune() == {
        "deliveries_deleted": 0,
        "payloads_emptied": 0,
        "oauth_states_deleted": 0,
    }


async def test_a_turn_that_stops_at_its_cap_says_it_is_behind(
    database_url: str, pool: Pool
) -> None:
    # Ingest faster than a turn's cap (100 batches a kind) must not outgrow the pruning: the
    # worker comes back a second later instead of ten minutes (PRUNE_AGAIN_SECONDS).
    for n in range(5):
        delivery(database_url, f"old-{n}", 31 + n)
    retention = PostgresStorageRetention(pool, payload_days=30, batch=2)
    assert (await retention.prune(max_batches=2))["deliveries_deleted"] == 4
    assert retention.behind
    assert (await retention.prune(max_batches=2))["deliveries_deleted"] == 1
    assert not retention.behind


async def test_a_retention_shorter_than_the_dedup_window_empties_payloads_keeps_keys(
    database_url: str, pool: Pool
) -> None:
    delivery(database_url, "today", 0.1)
    delivery(database_url, "two-days", 2)  # inside the dedup window: payload gone, key kept
    delivery(database_url, "past-dedup", DEDUP_DAYS + 0.5)
    retention = PostgresStorageRetention(pool, payload_days=1)

    done = await retention.prune()

    assert done["deliveries_deleted"] == 1
    assert done["payloads_emptied"] == 1
    assert deliveries(database_url) == {"today": True, "two-days": False}


async def test_the_runtime_role_cannot_prune_outside_the_retention_scope(database_url: str) -> None:
    delivery(database_url, "old", 40, user="alice")
    with runtime_connection(database_url) as conn:
        deleted = conn.execute("DELETE FROM calendly_webhook_events").rowcount
        with conn.transaction():  # the host scope reads across tenants but deletes nothing
            conn.execute("SELECT set_config('app.scope', 'host', true)")
            deleted += conn.execute("DELETE FROM calendly_webhook_events").rowcount
    assert deleted == 0
    assert deliveries(database_url) == {"old": True}


async def test_the_worker_prunes_on_its_turn(database_url: str) -> None:
    settings = load_settings(service_environment(database_url, "http://127.0.0.1:9", 8000))
    container = Container(settings=settings)
    try:
        worker = await build_worker(container, settings)
        delivery(database_url, "old", settings.worker.webhook_payload_retention_days + 1)
        delivery(database_url, "recent", 1)
        await worker.prune()
    finally:
        await resolve(container.shutdown_resources())
    assert deliveries(database_url) == {"recent": True}


def test_the_retention_scope_may_empty_payloads_never_write_one(database_url: str) -> None:
    delivery(database_url, "kept", 1, user="alice")
    with runtime_connection(database_url) as conn:
        with conn.transaction():
            conn.execute("SELECT set_config('app.scope', 'retention', true)")
            emptied = conn.execute(
                "UPDATE calendly_webhook_events SET payload = NULL, raw_payload = NULL"
            ).rowcount
        assert emptied == 1
        forge = "UPDATE calendly_webhook_events SET payload = '{\"forged\": true}'"
        with conn.transaction():
            conn.execute("SELECT set_config('app.scope', 'retention', true)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forge)
    assert deliveries(database_url) == {"kept": False}
