"""Fault-test fixtures: a Postgres of their own that may be stopped hard, and small helpers.

The session's shared cluster (`pg_cluster`) serves every other test, so it is never stopped;
`own_postgres` is a separate embedded (pgserver) instance, started once per module that asks
for it, which a test may stop with `pg_ctl stop -m immediate` and start again on the same data
directory and socket.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import psycopg
import pytest

from tests.support.deliveries import envelope, invitee_payload, sign
from tests.support.postgres import PgCluster

PG_CTL_TIMEOUT = 30.0
SIGNATURE: Final = "Calendly-Webhook-Signature"


@dataclass
class StoppablePostgres:
    """A pgserver instance this module owns: stop it hard, start it again, same address."""

    server: Any  # pgserver.PostgresServer (untyped)
    cluster: PgCluster

    @property
    def pgdata(self) -> Path:
        return Path(self.server.pgdata)

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        subprocess.run(
            [str(Path(POSTGRES_BIN_PATH) / "pg_ctl"), "-D", str(self.pgdata), *args],
            check=True,
            capture_output=True,
            timeout=PG_CTL_TIMEOUT,
            user=self.server.system_user,  # pgserver runs Postgres as its own user under root
        )

    def is_running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def stop_immediately(self) -> None:
        """`pg_ctl stop -m immediate`: every backend dies at once, no checkpoint, no goodbye."""
        self._pg_ctl("-w", "-m", "immediate", "stop")
        assert not self.is_running()

    def start(self) -> None:
        """Start it again on the same data directory and socket (crash recovery runs first)."""
        # pgserver's own start-up: the same socket directory, and it keeps track of the new
        # postmaster so the module's clean-up stops it.
        self.server.ensure_postgres_running()
        assert self.server.get_uri() == self.cluster.admin_url


def _start_own_postgres(workdir: Path) -> StoppablePostgres:
    # A dev dependency (requirements.lock): missing, this fails instead of skipping.
    from pgserver import get_server  # type: ignore[attr-defined]

    server = get_server(workdir, cleanup_mode="stop")
    cluster = PgCluster(admin_url=server.get_uri(), server=server)
    cluster.create_template()
    return StoppablePostgres(server=server, cluster=cluster)


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[StoppablePostgres]:
    """A Postgres for this module alone (never the session's shared cluster).

    Its data directory is not under pytest's base temp: a pytest session starting meanwhile
    resets that tree to mode 0700, which the `pgserver` user (Postgres' own, under root) could
    then no longer enter, and a restart would fail.
    """
    workdir = Path(tempfile.mkdtemp(prefix="calendly-connect-faults-"))
    try:
        pg = _start_own_postgres(workdir / "pgdata")
        try:
            yield pg
        finally:
            if not pg.is_running():
                pg.start()  # so the clean-up below finds and stops the current postmaster
            pg.server.cleanup()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def own_database_url(own_postgres: StoppablePostgres) -> Iterator[str]:
    """A fresh migrated database on the module's own Postgres, running when the test starts."""
    if not own_postgres.is_running():
        own_postgres.start()
    name = own_postgres.cluster.new_database()
    try:
        yield own_postgres.cluster.url_for(name)
    finally:
        if not own_postgres.is_running():
            own_postgres.start()
        own_postgres.cluster.drop(name)


def count_rows(database_url: str, table: str) -> int:
    """Rows in `table`, read as the owning (migrating) user, which row-level security spares."""
    with psycopg.connect(database_url) as conn:
        cursor = conn.execute(
            psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table))
        )
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float, what: str, interval: float = 0.05
) -> None:
    """Poll `check` until it is true; fail with `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"gave up after {within} s waiting for {what}"
        await asyncio.sleep(interval)


def booking(host_uri: str, event_id: str = "e-fault", invitee_id: str = "i-fault") -> bytes:
    """An `invitee.created` delivery for `host_uri`, as Calendly sends it."""
    payload = invitee_payload(host_uri=host_uri, event_id=event_id, invitee_id=invitee_id)
    return envelope("invitee.created", payload, host_uri)


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]
    seconds: float


async def deliver(
    http: aiohttp.ClientSession, service_url: str, body: bytes, signing_key: str
) -> Answer:
    """POST a delivery to the shared webhook URL as Calendly does: freshly signed each time."""
    headers = {"Content-Type": "application/json", SIGNATURE: sign(body, signing_key)}
    started = time.monotonic()
    async with http.post(f"{service_url}/webhooks/calendly", data=body, headers=headers) as r:
        answer = await r.json(content_type=None)
        return Answer(r.status, answer, dict(r.headers), time.monotonic() - started)


EVENTS_TABLE = "calendly_webhook_events"
MEETINGS_TABLE = "meetings"
INVITEES_TABLE = "meeting_invitees"


async def effects(database_url: str) -> tuple[int, int, int]:
    """(webhook event rows, meetings, invitees), counted off the event loop."""
    return (
        await asyncio.to_thread(count_rows, database_url, EVENTS_TABLE),
        await asyncio.to_thread(count_rows, database_url, MEETINGS_TABLE),
        await asyncio.to_thread(count_rows, database_url, INVITEES_TABLE),
    )
