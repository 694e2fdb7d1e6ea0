"""A real Postgres for tests: embedded (pgserver) by default, TEST_DATABASE_URL to override.

One migrated template database per session; each test gets its own copy (CREATE DATABASE ...
TEMPLATE is fast), so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from adapters.postgres.migrations import migrate
from adapters.postgres.roles import DEFAULT_RUNTIME_ROLE

RUNTIME_ROLE = DEFAULT_RUNTIME_ROLE


@dataclass
class PgCluster:
    admin_url: str
    template: str = ""
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    server: object | None = None

    def url_for(self, dbname: str) -> str:
        """The admin URL with another database (kept a URL: the service accepts only those)."""
        if "://" not in self.admin_url:
            return make_conninfo(self.admin_url, dbname=dbname)
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{dbname}"))

    def create_template(self) -> None:
        self.template = f"cc_template_{os.getpid()}"
        self._drop(self.template)
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        asyncio.run(migrate(self.url_for(self.template), RUNTIME_ROLE))

    def new_database(self) -> str:
        name = f"cc_test_{os.getpid()}_{next(self._counter)}"
        self._drop(name)
        self._admin(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(self.template)
            )
        )
        return name

    def drop(self, name: str) -> None:
        self._drop(name)

    def _drop(self, name: str) -> None:
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)


def start_cluster(workdir: Path) -> PgCluster:
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        return PgCluster(admin_url=external)
    from pgserver import get_server  # type: ignore[attr-defined]

    server = get_server(workdir, cleanup_mode="stop")
    return PgCluster(admin_url=server.get_uri(), server=server)


def stop_cluster(cluster: PgCluster) -> None:
    if cluster.server is not None:
        cluster.server.cleanup()  # type: ignore[attr-defined]


def runtime_connection(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection acting as the runtime role, as the service's pool does."""
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(f"SET ROLE {RUNTIME_ROLE}")
    return conn


def add_bare_connection(url: str, user: str) -> str:
    """A disconnected connection row for `user` (one change in the log); its id."""
    cid = str(uuid.uuid4())
    with runtime_connection(url) as conn, conn.transaction():
        conn.execute("SELECT set_config('app.user_id', %s, true)", (user,))
        conn.execute(
            "INSERT INTO calendar_connections (id, user_id, status, webhook_token)"
            " VALUES (%s, %s, 'disconnected', %s)",
            (cid, user, f"token-{uuid.uuid4()}"),
        )
    return cid
