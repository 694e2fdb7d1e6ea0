"""Readiness on real Postgres: the schema's migrations, the live-update listener, the database;
and the database's gauges of `/metrics` read by their real query."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import psycopg_pool

from adapters.postgres.listener import PostgresChangeListener
from adapters.postgres.migrations import discover
from adapters.postgres.readings import PostgresReadings
from entrypoints.container import Listening, readiness

Pool = psycopg_pool.AsyncConnectionPool[Any]


def listening(connected: bool) -> Listening:
    state = Listening()
    state.connected = lambda: connected
    return state


async def test_ready_when_migrated_and_listening(pool: Pool) -> None:
    assert await readiness(pool, listening(True), discover()) == ()


async def test_a_missing_migration_is_named(pool: Pool, database_url: str) -> None:
    last = discover()[-1]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (last.version,))

    problems = await readiness(pool, listening(True), discover())

    assert [p.check for p in problems] == ["migrations"]
    assert last.path.name in problems[0].detail


async def test_a_listener_that_is_not_connected_is_named(pool: Pool, database_url: str) -> None:
    state = Listening()
    # The real listener, pointed at a port where nothing listens: it keeps trying.
    listener = PostgresChangeListener(
        "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", lambda *_: None
    )
    state.connected = listener.connected.is_set
    await listener.start()
    try:
        await asyncio.sleep(0.3)
        problems = await readiness(pool, state, discover())
    finally:
        await listener.stop()

    assert [p.check for p in problems] == ["live_listener"]


async def test_a_listener_that_connects_makes_it_ready(pool: Pool, database_url: str) -> None:
    state = Listening()
    listener = PostgresChangeListener(database_url, lambda *_: None)
    state.connected = listener.connected.is_set
    await listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        assert await readiness(pool, state, discover()) == ()
    finally:
        await listener.stop()


async def test_a_database_that_does_not_answer_is_named(database_url: str) -> None:
    down: Pool = psycopg_pool.AsyncConnectionPool(
        "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", min_size=0, max_size=1, open=False
    )
    await down.open(wait=False)
    try:
        problems = await readiness(down, listening(True), discover())
    finally:
        await down.close()

    assert [p.check for p in problems] == ["database"]


async def test_the_database_gauges_come_from_one_read_only_transaction(pool: Pool) -> None:
    readings = await PostgresReadings(pool)()

    assert readings.connections == {}
    assert readings.host_webhook_backlog == {}
    assert readings.worker_lag_seconds == 0.0
