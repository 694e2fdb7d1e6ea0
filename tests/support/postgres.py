"""A real Postgres for tests, chosen in one place (`choose_postgres`), in this order:

1. `TEST_DATABASE_URL`, when set: that server (a superuser's URL: the tests migrate and make
   databases); nothing is started.
2. A container (testcontainers, the official `postgres:<TEST_POSTGRES_VERSION>` image, default
   the embedded server's major version), when `TEST_POSTGRES=container` or a Docker engine
   answers; started once per test session and removed after it.
3. Otherwise the embedded server (pgserver), started once per test session.

`TEST_POSTGRES=embedded` skips the Docker probe. One migrated template database per session;
each test gets its own copy (CREATE DATABASE ... TEMPLATE is fast), so tests never see each
other's rows. The outage tests (tests/faults) stop and restart a server, so they always own an
embedded one, whichever is chosen here; so do the tests of a migrating user that may only
create roles (tests/integration/test_batch_writer_provisioning.py), which need a cluster
without the service's roles.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from adapters.postgres.migrations import DEFAULT_DIRECTORY, migrate
from adapters.postgres.roles import DEFAULT_RUNTIME_ROLE

RUNTIME_ROLE = DEFAULT_RUNTIME_ROLE


@dataclass
class PgCluster:
    admin_url: str
    template: str = ""
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    server: Any = None  # pgserver.PostgresServer or a testcontainers container (untyped)

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


# The major version pgserver ships (tests/integration/test_postgres_choice.py checks it against
# the running embedded server): a container runs the same unless told otherwise.
EMBEDDED_MAJOR = 16
CONTAINER_USER = "postgres"
CONTAINER_DB = "postgres"
Kind = Literal["url", "container", "embedded"]


@dataclass(frozen=True)
class PostgresChoice:
    kind: Kind
    why: str
    url: str | None = None
    image: str | None = None


def choose_postgres(
    environ: Mapping[str, str], docker_answers: Callable[[], bool]
) -> PostgresChoice:
    """Which Postgres the tests get (see the module's docstring); ValueError for a setting
    that names none."""
    url = environ.get("TEST_DATABASE_URL", "").strip()
    if url:
        return PostgresChoice("url", "TEST_DATABASE_URL is set", url=url)
    wanted = environ.get("TEST_POSTGRES", "").strip().lower()
    if wanted not in ("", "container", "embedded"):
        raise ValueError(
            f"TEST_POSTGRES={wanted!r} names no kind of test Postgres: use container or"
            " embedded (or set TEST_DATABASE_URL)"
        )
    version = environ.get("TEST_POSTGRES_VERSION", "").strip() or str(EMBEDDED_MAJOR)
    if not re.fullmatch(r"\d{1,2}(\.\d{1,2})?", version):
        raise ValueError(
            f"TEST_POSTGRES_VERSION={version!r} is not a Postgres version (such as 16 or 15.8)"
        )
    if wanted == "container":
        return PostgresChoice("container", "TEST_POSTGRES=container", image=f"postgres:{version}")
    if wanted == "" and docker_answers():
        return PostgresChoice("container", "a Docker engine answers", image=f"postgres:{version}")
    return PostgresChoice(
        "embedded",
        "TEST_POSTGRES=embedded" if wanted else "no TEST_DATABASE_URL and no Docker engine",
    )


def docker_answers(timeout: float = 2.0) -> bool:
    """Whether a Docker engine answers a ping (DOCKER_HOST, else the local socket)."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no engine, no socket, no permission: not usable here
        return False


class ContainerLike(Protocol):
    """What the tests read of a started testcontainers Postgres."""

    username: str
    password: str
    dbname: str

    def get_container_host_ip(self) -> str: ...

    def get_exposed_port(self, port: int) -> int | str: ...


def container_url(container: ContainerLike) -> str:
    """The superuser URL the tests get for a started container (host and mapped port as
    Docker reports them)."""
    host = container.get_container_host_ip()
    port = container.get_exposed_port(5432)
    user, password = quote(container.username, safe=""), quote(container.password, safe="")
    return f"postgresql://{user}:{password}@{host}:{port}/{container.dbname}"


def start_container(image: str) -> Any:
    """The official image, started with a random superuser password; raises with what to do
    when no Docker engine can start it (never a silent fallback)."""
    from testcontainers.community.postgres import PostgresContainer

    try:  # the client is made (and the engine reached) as the container object is
        container = PostgresContainer(
            image,
            username=CONTAINER_USER,
            password=secrets.token_urlsafe(16),
            dbname=CONTAINER_DB,
            driver=None,
        )
        container.start()
    except Exception as exc:
        raise RuntimeError(
            f"TEST_POSTGRES=container, but {image} could not be started ({type(exc).__name__}:"
            f" {exc}). Start a Docker engine, or unset TEST_POSTGRES to use the embedded server,"
            " or set TEST_DATABASE_URL."
        ) from exc
    return container


def start_cluster(workdir: Path, environ: Mapping[str, str] | None = None) -> PgCluster:
    choice = choose_postgres(os.environ if environ is None else environ, docker_answers)
    if choice.kind == "url":
        assert choice.url is not None
        return PgCluster(admin_url=choice.url)
    if choice.kind == "container":
        assert choice.image is not None
        container = start_container(choice.image)
        return PgCluster(admin_url=container_url(container), server=container)
    from pgserver import get_server  # type: ignore[attr-defined]

    server = get_server(workdir, cleanup_mode="stop")
    return PgCluster(admin_url=server.get_uri(), server=server)


def stop_cluster(cluster: PgCluster) -> None:
    server = cluster.server
    if server is None:
        return
    if hasattr(server, "cleanup"):  # pgserver
        server.cleanup()
    else:  # a testcontainers container
        server.stop()


def as_role(url: str, role: str) -> str:
    """`url` logging in as `role` instead (a login role of the test's own, no password)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


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


async def database_before(
    cluster: PgCluster, workdir: Path, migration: str | None
) -> AsyncIterator[str]:
    """A fresh database migrated up to (not including) `migration` (None: all of them), as
    deployments were before it; dropped at the end. For tests of what a migration keeps."""
    folder = workdir / f"migrations_before_{migration or 'none'}"
    folder.mkdir()
    for path in sorted(DEFAULT_DIRECTORY.glob("*.sql")):
        if migration is None or path.name < migration:
            shutil.copy(path, folder / path.name)
    name = f"cc_before_{uuid.uuid4().hex[:8]}"
    cluster.drop(name)
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = cluster.url_for(name)
    try:
        await migrate(url, RUNTIME_ROLE, folder)
        yield url
    finally:
        cluster.drop(name)
