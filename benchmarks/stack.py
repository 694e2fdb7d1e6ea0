"""One benchmark's stack on loopback: embedded Postgres in a temporary folder, the sandbox, and N
`calendly-connect serve --fd` processes on one port, a socket each (as `make run` does), all
started by the local stack's launcher (entrypoints/developer/launcher.py).

No maintenance worker runs: it would call the sandbox on its own schedule and blur the call
counts and the timings; nothing measured here needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import psutil  # type: ignore[import-untyped]
import psycopg

from adapters.crypto import AesGcmTokenCipher, parse_encryption_keys
from entrypoints.developer.launcher import LocalStack, service_environment

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
    local: LocalStack  # the processes, the socket and Postgres
    admin_url: str  # superuser, on the service's database
    url: str
    sandbox_url: str

    @property
    def env(self) -> dict[str, str]:
        return self.local.env

    # ------------------------------------------------------------ processes
    def start_services(self, count: int, **overrides: str) -> None:
        """(Re)start `count` service processes with the stack's environment plus `overrides`."""
        self.stop_services()
        self.local.start_services(count, **overrides)
        self._wait_ready()

    def start_command(self, argv: list[str], count: int = 1, **overrides: str) -> None:
        """Start `count` other server processes on the stack's socket (`{fd}` in argv)."""
        self.stop_services()
        for _ in range(count):
            self.local.start_on_socket("other", argv, **overrides)
        self._wait_ready()

    def _wait_ready(self) -> None:
        # A few answers in a row per process: the slowest of them has had time to start too.
        self.local.wait_ready(self.url, answers_each=3)
        time.sleep(0.5)  # give siblings that have not answered yet a moment to settle

    def stop_services(self) -> None:
        self.local.stop_services()

    @property
    def service_pids(self) -> list[int]:
        return [p.pid for p in self.local.services]

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

    # ------------------------------------------------------------------- CPU
    def postgres_cpu(self) -> dict[int, float]:
        """CPU seconds so far of each process of the stack's Postgres (postmaster and
        backends), and under the key `ENDED` those of its processes that have ended (the
        postmaster reaps its backends and workers: an autovacuum worker or a connection that
        comes and goes within a run counts too)."""
        assert self.local.postgres is not None
        pid = int((self.local.postgres.data_dir / "postmaster.pid").read_text().split()[0])
        root = psutil.Process(pid)
        out = _cpu_of(root, recursive=True)
        times = root.cpu_times()
        out[ENDED] = float(times.children_user + times.children_system)
        return out

    def services_cpu(self) -> dict[int, float]:
        """CPU seconds so far of each service process."""
        out: dict[int, float] = {}
        for pid in self.service_pids:
            with contextlib.suppress(psutil.Error):
                out.update(_cpu_of(psutil.Process(pid), recursive=False))
        return out

    def socket_dir(self) -> str:
        """Where the embedded Postgres listens (pgbench and psql take it as -h)."""
        assert self.local.postgres is not None
        return self.local.postgres.socket_dir

    def cipher(self) -> AesGcmTokenCipher:
        keys, active = parse_encryption_keys(self.env["TOKEN_ENCRYPTION_KEY"])
        return AesGcmTokenCipher(keys, active)

    # ----------------------------------------------------------------- users
    def token_for(self, user_id: str, ttl: int = 6 * 3600) -> str:
        now = int(time.time())
        claims = {"sub": user_id, "aud": JWT_AUDIENCE, "iat": now, "exp": now + ttl}
        return jwt.encode(claims, self.env["JWT_SECRET"], algorithm="HS256")

    async def connect(
        self, http: aiohttp.ClientSession, user_id: str, plan: str = "standard"
    ) -> None:
        """The popup round trip through the service's API, approved at the sandbox (as a
        Calendly user on `plan`: "free" has no webhooks)."""
        auth = {"Authorization": f"Bearer {self.token_for(user_id)}"}
        async with http.post(f"{self.url}/api/calendly/connect", headers=auth) as response:
            assert response.status == 200, await response.text()
            started = await response.json()
            binding = SimpleCookie(response.headers["Set-Cookie"])["cc_oauth_binding"].value
        approve = (
            f"{started['authorization_url']}&sandbox_login={user_id}@bench.example"
            f"&sandbox_plan={plan}"
        )
        async with http.get(approve, allow_redirects=False) as response:
            assert response.status == 302, await response.text()
            callback = response.headers["Location"]
        headers = {"Cookie": f"cc_oauth_binding={binding}", "Accept": "application/json"}
        async with http.get(callback, headers=headers) as response:
            assert response.status == 200, await response.text()
            connection = (await response.json())["connection"]
            assert connection["status"] == "active", connection
            webhooks = "unavailable_plan" if plan == "free" else "active"
            assert connection["webhook_status"] == webhooks, connection

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


def _cpu_of(root: Any, *, recursive: bool) -> dict[int, float]:
    out = {}
    for proc in [root, *root.children(recursive=True)] if recursive else [root]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            out[proc.pid] = float(times.user + times.system)
    return out


# The key of a reading's ended processes (no process has this id).
ENDED = -1


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings of `Stack.postgres_cpu` or `Stack.services_cpu`.

    A process started since counts in full. One that ended since counts for what it used
    after the first reading: its whole use is in `after[ENDED]` (when the reading has it),
    its use until the first reading is taken off again."""
    used = sum(v - before.get(pid, 0.0) for pid, v in after.items())
    if ENDED in after:
        used -= sum(v for pid, v in before.items() if pid not in after)
    return used


def children_cpu() -> float:
    """CPU seconds of this process's children that have ended (a load generator run with
    `subprocess.run` counts once it has returned)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class CpuReading:
    """Where the machine's CPU went over one measured run: the service processes, Postgres and
    the load generator (a child of this process). Taken before and after the run."""

    services: dict[int, float]
    postgres: dict[int, float]
    load: float

    @classmethod
    def take(cls, s: Stack) -> CpuReading:
        return cls(s.services_cpu(), s.postgres_cpu(), children_cpu())

    def per_request_us(self, later: CpuReading, requests: int) -> dict[str, float]:
        """Microseconds of CPU per answered request, by component, from this reading to
        `later`."""
        n = max(1, requests)
        return {
            "service": round(cpu_used(self.services, later.services) * 1e6 / n, 1),
            "postgres": round(cpu_used(self.postgres, later.postgres) * 1e6 / n, 1),
            "load": round((later.load - self.load) * 1e6 / n, 1),
        }


@contextlib.contextmanager
def stack(name: str, **overrides: str) -> Iterator[Stack]:
    """A fresh stack (no service process yet: call `start_services`)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    workdir.chmod(0o755)  # the embedded Postgres runs as its own system user when we are root
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CALENDLY_", "DB_"))}
    local = LocalStack(base, logs=workdir)
    try:
        database_url = local.start_postgres(workdir / "postgres", "calendly_connect")
        url = local.listen()
        local.env.update(
            service_environment(
                database_url=database_url,
                public_url=url,
                client_id=f"bench-{name}",
                HOST="127.0.0.1",
                PORT=str(local.port),
                DEV_LOGIN_ENABLED="true",
                LOG_FORMAT="json",
            )
        )
        local.env.update(overrides)
        local.migrate()
        sandbox_url = local.start_sandbox(redirect_uris=[f"{url}/oauth/calendly/callback"])
        built = Stack(
            workdir=workdir, local=local, admin_url=database_url, url=url, sandbox_url=sandbox_url
        )
        yield built
    finally:
        local.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def host_of(url: str) -> str:
    return urlsplit(url).netloc
