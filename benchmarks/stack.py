"""One benchmark's stack on loopback: embedded Postgres in a temporary folder, the sandbox, and N
`calendly-connect serve --fd` processes sharing one listening socket (as `make run` does).

No maintenance worker runs: it would call the sandbox on its own schedule and blur the call
counts and the timings; nothing measured here needs it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import psycopg

from adapters.crypto import AesGcmTokenCipher, parse_encryption_keys
from entrypoints.devstack import with_database

JWT_AUDIENCE = "authenticated"


@dataclass(frozen=True)
class User:
    """An app user connected through the API, with what a benchmark needs to drive them."""

    user_id: str
    token: str  # the app's bearer token (JWT)
    connection_id: str
    webhook_token: str
    signing_key: str  # the connection's own webhook signing key, as Calendly signs with it
    calendly_user_uri: str
    sandbox_user_id: str


@dataclass
class Stack:
    workdir: Path
    pg_server: Any
    admin_url: str  # superuser, on the service's database
    env: dict[str, str]
    listener: socket.socket
    url: str
    sandbox_url: str
    sandbox: subprocess.Popen[bytes] | None = None
    services: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[Any] = field(default_factory=list)

    # ------------------------------------------------------------ processes
    def start_services(self, count: int, **overrides: str) -> None:
        """(Re)start `count` service processes with the stack's environment plus `overrides`."""
        self.stop_services()
        env = {**self.env, **overrides}
        for n in range(count):
            log = (self.workdir / f"service-{len(self._logs)}-{n}.log").open("ab")
            self._logs.append(log)
            argv = [sys.executable, "-m", "entrypoints.cli", "serve"]
            argv += ["--fd", str(self.listener.fileno())]
            self.services.append(
                subprocess.Popen(  # noqa: S603 - our own CLI, fixed argv
                    argv,
                    env=env,
                    pass_fds=(self.listener.fileno(),),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        wait_ready(self.url, self.services)

    def start_command(self, argv: list[str], count: int = 1, **overrides: str) -> None:
        """Start `count` other server processes on the stack's socket (`{fd}` in argv)."""
        self.stop_services()
        env = {**self.env, **overrides}
        fd = str(self.listener.fileno())
        for _ in range(count):
            log = (self.workdir / f"other-{len(self._logs)}.log").open("ab")
            self._logs.append(log)
            self.services.append(
                subprocess.Popen(  # noqa: S603 - fixed argv of our own modules
                    [a.replace("{fd}", fd) for a in argv],
                    env=env,
                    pass_fds=(self.listener.fileno(),),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        wait_ready(self.url, self.services)

    def stop_services(self) -> None:
        stop_processes(self.services)
        self.services = []

    @property
    def service_pids(self) -> list[int]:
        return [p.pid for p in self.services]

    def close(self) -> None:
        self.stop_services()
        if self.sandbox is not None:
            stop_processes([self.sandbox])
        self.listener.close()
        for log in self._logs:
            log.close()
        if self.pg_server is not None:
            with contextlib.suppress(Exception):
                self.pg_server.cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --------------------------------------------------------------- database
    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (bypasses RLS: the benchmark's own checks)."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            cursor = conn.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description else []

    def settle(self, seconds: float = 30) -> None:
        """Wait until no service transaction is running (requests still in flight when a load
        generator stopped finish on the server a moment later)."""
        deadline = time.monotonic() + seconds
        quiet = 0
        while time.monotonic() < deadline:
            busy = self.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                " AND backend_type = 'client backend' AND datname = current_database()"
                " AND (state LIKE 'idle in transaction%%' OR (state = 'active'"
                " AND query NOT ILIKE 'LISTEN%%'))"
            )[0][0]
            quiet = quiet + 1 if busy == 0 else 0
            if quiet >= 3:
                return
            time.sleep(0.05)
        raise RuntimeError("the database did not settle")

    def socket_dir(self) -> str:
        """Where the embedded Postgres listens (pgbench and psql take it as -h)."""
        return str(psycopg.conninfo.conninfo_to_dict(self.admin_url).get("host", ""))

    def cipher(self) -> AesGcmTokenCipher:
        keys, active = parse_encryption_keys(self.env["TOKEN_ENCRYPTION_KEY"])
        return AesGcmTokenCipher(keys, active)

    # ----------------------------------------------------------------- users
    def token_for(self, user_id: str, ttl: int = 6 * 3600) -> str:
        now = int(time.time())
        claims = {"sub": user_id, "aud": JWT_AUDIENCE, "iat": now, "exp": now + ttl}
        return jwt.encode(claims, self.env["JWT_SECRET"], algorithm="HS256")

    async def connect(self, http: aiohttp.ClientSession, user_id: str) -> None:
        """The popup round trip through the service's API, approved at the sandbox."""
        auth = {"Authorization": f"Bearer {self.token_for(user_id)}"}
        async with http.post(f"{self.url}/api/calendly/connect", headers=auth) as response:
            assert response.status == 200, await response.text()
            started = await response.json()
            binding = SimpleCookie(response.headers["Set-Cookie"])["cc_oauth_binding"].value
        approve = f"{started['authorization_url']}&sandbox_login={user_id}@bench.example"
        async with http.get(approve, allow_redirects=False) as response:
            assert response.status == 302, await response.text()
            callback = response.headers["Location"]
        headers = {"Cookie": f"cc_oauth_binding={binding}", "Accept": "application/json"}
        async with http.get(callback, headers=headers) as response:
            assert response.status == 200, await response.text()
            connection = (await response.json())["connection"]
            assert connection["status"] == "active", connection
            assert connection["webhook_status"] == "active", connection

    async def connect_users(self, user_ids: list[str], concurrency: int = 8) -> list[User]:
        gate = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession() as http:

            async def one(user_id: str) -> None:
                async with gate:
                    await self.connect(http, user_id)

            await asyncio.gather(*(one(u) for u in user_ids))
            sandbox_users = await sandbox_user_ids(http, self.sandbox_url)
        return self.users(user_ids, sandbox_users)

    def users(self, user_ids: list[str], sandbox_users: dict[str, str]) -> list[User]:
        rows = self.sql(
            "SELECT user_id, id::text, webhook_token, webhook_signing_key_enc, calendly_user_uri"
            " FROM calendar_connections WHERE user_id = ANY(%s)",
            (user_ids,),
        )
        cipher = self.cipher()
        by_id = {}
        for user_id, connection_id, webhook_token, key_enc, user_uri in rows:
            key = cipher.decrypt(
                key_enc, context=f"calendar_connections:{connection_id}:signing_key"
            )
            by_id[user_id] = User(
                user_id=user_id,
                token=self.token_for(user_id),
                connection_id=connection_id,
                webhook_token=webhook_token,
                signing_key=key.reveal(),
                calendly_user_uri=user_uri,
                sandbox_user_id=sandbox_users[f"{user_id}@bench.example"],
            )
        return [by_id[u] for u in user_ids]


async def sandbox_user_ids(http: aiohttp.ClientSession, sandbox_url: str) -> dict[str, str]:
    async with http.get(f"{sandbox_url}/_sandbox/users") as response:
        users = (await response.json())["users"]
    return {u["email"]: u["id"] for u in users}


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(url: str, processes: list[subprocess.Popen[bytes]], seconds: float = 60) -> None:
    """Until every process answers /health/ready (each accepts on the shared socket in turn)."""
    import urllib.request

    deadline = time.monotonic() + seconds
    ready = 0
    while time.monotonic() < deadline:
        for proc in processes:
            if proc.poll() is not None:
                raise RuntimeError(f"a service process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as response:  # noqa: S310
                ready = ready + 1 if response.status == 200 else 0
        except OSError:
            ready = 0
        # A few answers in a row: the slowest of the processes has had time to start too.
        if ready >= 3 * len(processes):
            time.sleep(0.5)  # give siblings that have not answered yet a moment to settle
            return
        time.sleep(0.1)
    raise RuntimeError(f"the service at {url} did not become ready")


def _free_listener() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    return listener


def _start_postgres(workdir: Path) -> tuple[Any, str]:
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from pgserver import get_server  # type: ignore[attr-defined]

    server = get_server(workdir / "postgres", cleanup_mode="stop")
    admin = str(server.get_uri())
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE calendly_connect")
    return server, with_database(admin, "calendly_connect")


def _start_sandbox(env: dict[str, str], redirect: str, path: Path) -> tuple[Any, str]:
    argv = [sys.executable, "-m", "entrypoints.cli", "sandbox", "--port", "0"]
    argv += ["--client-id", env["CALENDLY_OAUTH_CLIENT_ID"], "--redirect-uri", redirect]
    with path.open("ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("Calendly sandbox listening on "):
                return proc, line.rsplit(" ", 1)[1].strip()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_processes([proc])
    raise RuntimeError(f"the sandbox did not start (see {path})")


@contextlib.contextmanager
def stack(name: str, **overrides: str) -> Iterator[Stack]:
    """A fresh stack (no service process yet: call `start_services`)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    workdir.chmod(0o755)  # the embedded Postgres runs as its own system user when we are root
    pg_server = None
    built: Stack | None = None
    try:
        pg_server, admin_url = _start_postgres(workdir)
        listener = _free_listener()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CALENDLY_", "DB_"))},
            "DATABASE_URL": admin_url,
            "CALENDLY_OAUTH_CLIENT_ID": f"bench-{name}",
            "CALENDLY_OAUTH_CLIENT_SECRET": secrets.token_urlsafe(32),
            "CALENDLY_WEBHOOK_SIGNING_KEY": secrets.token_urlsafe(32),
            "TOKEN_ENCRYPTION_KEY": "b1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "JWT_SECRET": secrets.token_urlsafe(48),
            "PUBLIC_BASE_URL": url,
            "HOST": "127.0.0.1",
            "PORT": str(listener.getsockname()[1]),
            "DEV_LOGIN_ENABLED": "true",
            "LOG_FORMAT": "json",
            **overrides,
        }
        run_migrations_quietly(env, workdir)
        sandbox, sandbox_url = _start_sandbox(
            env, f"{url}/oauth/calendly/callback", workdir / "sandbox.log"
        )
        env["CALENDLY_AUTH_BASE_URL"] = sandbox_url
        env["CALENDLY_API_BASE_URL"] = sandbox_url
        built = Stack(
            workdir=workdir,
            pg_server=pg_server,
            admin_url=admin_url,
            env=env,
            listener=listener,
            url=url,
            sandbox_url=sandbox_url,
            sandbox=sandbox,
        )
        yield built
    finally:
        if built is not None:
            built.close()
        elif pg_server is not None:
            pg_server.cleanup()
            shutil.rmtree(workdir, ignore_errors=True)


def run_migrations_quietly(env: dict[str, str], workdir: Path) -> None:
    with (workdir / "migrate.log").open("wb") as log:
        result = subprocess.run(
            [sys.executable, "-m", "entrypoints.cli", "migrate"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"migrations failed: {(workdir / 'migrate.log').read_text()}")


def host_of(url: str) -> str:
    return urlsplit(url).netloc
