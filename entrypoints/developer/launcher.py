"""The local stack's parts, started one way for `make run`, `make chaos`, `make bench` and tests.

An embedded Postgres (pgserver) in a folder, the Calendly sandbox, `migrate`, N `serve --fd`
processes, each listening on a socket of its own on the stack's one port (SO_REUSEPORT: the
kernel spreads connections evenly), and the maintenance worker: every child is our own
CLI (`python -m entrypoints.cli ...`) with the stack's environment, and all of them stop together.
Each user puts together the parts it needs: `dev` all of them, the benchmarks no worker, chaos
its own in-process sandbox (it needs the sandbox's state), the tests an in-process service.
"""

from __future__ import annotations

import base64
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

CLI: Final = (sys.executable, "-m", "entrypoints.cli")
SANDBOX_READY: Final = "Calendly sandbox listening on "
# How long stopping children get after SIGTERM before they are killed.
STOP_GRACE_SECONDS: Final = 15.0
Process = subprocess.Popen[bytes]


def new_secrets() -> dict[str, str]:
    """Fresh secrets for a local stack only: the OAuth client's secret and webhook signing key
    (the sandbox registers the client with them), a token encryption key, a JWT secret."""
    return {
        "TOKEN_ENCRYPTION_KEY": "local1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "JWT_SECRET": secrets.token_urlsafe(48),
        "CALENDLY_OAUTH_CLIENT_SECRET": secrets.token_urlsafe(32),
        "CALENDLY_WEBHOOK_SIGNING_KEY": secrets.token_urlsafe(32),
    }


def service_environment(
    *,
    database_url: str,
    public_url: str,
    client_id: str,
    sandbox_url: str | None = None,
    made: Mapping[str, str] | None = None,
    **settings: str,
) -> dict[str, str]:
    """The variables a service process needs to run against the sandbox: the database, where
    it is reached, the OAuth client, `made` secrets (fresh ones by default), and `settings`."""
    environ = {
        "DATABASE_URL": database_url,
        "PUBLIC_BASE_URL": public_url,
        "CALENDLY_OAUTH_CLIENT_ID": client_id,
        **(new_secrets() if made is None else made),
    }
    if sandbox_url is not None:
        environ["CALENDLY_AUTH_BASE_URL"] = environ["CALENDLY_API_BASE_URL"] = sandbox_url
    environ.update(settings)
    return environ


def with_database(url: str, dbname: str) -> str:
    """`url` (a postgresql:// URL) on another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def listening_socket(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    backlog: int | None = 1024,
    reuse_port: bool = False,
    reuse_address: bool = True,
) -> socket.socket:
    """A TCP socket listening on host:port (0: a free one), for service processes to share.

    `reuse_port`: one of several sockets on one port (SO_REUSEPORT), among whose listeners
    the kernel spreads new connections evenly; `backlog=None` binds without listening.
    `reuse_address=False` for a socket that only keeps a port (with `reuse_port`, not
    listening): no other server can then take the port, save this user's SO_REUSEPORT ones."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if reuse_address:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        listener.bind((host, port))
        if backlog is not None:
            listener.listen(backlog)
    except OSError:
        listener.close()
        raise
    return listener


# Server settings of the embedded Postgres (ALTER SYSTEM: kept in its data folder).
# wal_init_zero off (DR-55): a new WAL segment is made by writing its last byte, not 16 MB of
# zeros while every commit waits. A young database makes every segment new (a server that has
# run a while recycles old ones); under benchmark 1's load that was a stall of about 50 ms
# every 1.3-1.9 s, most of what put the 2-process p99 above 25 ms. Durability is unchanged: every
# commit is still flushed (fdatasync) before it is answered.
EMBEDDED_SETTINGS: Final = {"wal_init_zero": "off"}


class EmbeddedPostgres:
    """pgserver's Postgres on `data_dir` (started, or joined if it runs already) with `database`
    made if missing and EMBEDDED_SETTINGS applied; stopped by `close()`, and by `stop_hard()`
    whenever a test of faults wants."""

    def __init__(self, data_dir: Path, database: str) -> None:
        # pgserver asks platformdirs for a runtime dir that containers often lack; harmless.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from pgserver import get_server  # type: ignore[attr-defined]

        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.server: Any = get_server(data_dir, cleanup_mode="stop")
        # The superuser, on the maintenance database and on `database`.
        self.admin_url = str(self.server.get_uri())
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if found.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            apply_settings(conn, EMBEDDED_SETTINGS)
        self.url = with_database(self.admin_url, database)

    @property
    def socket_dir(self) -> str:
        """Where it listens (pgbench and psql take it as -h)."""
        return str(psycopg.conninfo.conninfo_to_dict(self.admin_url).get("host", ""))

    def stop_hard(self) -> None:
        """`pg_ctl stop -m immediate`: every backend dies at once, as in a crash."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(
            ["-w", "-m", "immediate", "stop"], pgdata=self.data_dir, user=self.server.system_user
        )

    def start(self) -> None:
        """Start it again on the same data and socket (after `stop_hard`, it recovers first)."""
        self.server.ensure_postgres_running()

    def close(self) -> None:
        self.server.cleanup()


def apply_settings(conn: psycopg.Connection[Any], settings: Mapping[str, str]) -> None:
    """`settings` made the server's own (ALTER SYSTEM, as the superuser `conn` is), and the
    configuration reloaded if any of them changed. A setting only a restart applies is refused
    (ValueError): the reload would leave it pending, unapplied."""
    changed = False
    for name, value in settings.items():
        row = conn.execute(
            "SELECT context, current_setting(name) FROM pg_settings WHERE name = %s", (name,)
        ).fetchone()
        if row is None:
            raise ValueError(f"{name} is not a setting this server knows")
        if row[0] == "postmaster":
            raise ValueError(f"{name} is not a setting a reload applies (only a restart)")
        if row[1] != value:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
            changed = True
    if changed:
        conn.execute("SELECT pg_reload_conf()")


def stop_processes(processes: Iterable[Process], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM each process still running, then SIGKILL whatever outlives `grace` seconds."""
    processes = list(processes)
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(
    url: str,
    processes: Iterable[Process] = (),
    *,
    answers: int = 1,
    seconds: float = 60.0,
    check: Callable[[], None] | None = None,
) -> None:
    """Until `url`/health/ready has answered 200 `answers` times in a row (the kernel spreads
    the probes over the processes that listen); RuntimeError if one of `processes` exits,
    `check` raises it, or time runs out."""
    processes = list(processes)
    deadline = time.monotonic() + seconds
    ready = 0
    while time.monotonic() < deadline:
        if check is not None:
            check()
        for proc in processes:
            if proc.poll() is not None:
                raise RuntimeError(f"a service process exited with {proc.returncode}")
        try:
            # Our own service, on loopback.
            with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as response:  # noqa: S310
                ready = ready + 1 if response.status == 200 else 0
        except OSError:
            ready = 0
        if ready >= answers:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the service at {url} did not become ready within {seconds:.0f} s")


class LocalStack:
    """The children of one local stack, each started with `env` (plus overrides), stopped
    together by `stop()`.

    With `logs`, each child writes to its own file there (NN-name.log); without, to this
    process's terminal.
    """

    def __init__(self, env: Mapping[str, str] | None = None, *, logs: Path | None = None) -> None:
        self.env: dict[str, str] = dict(env or {})
        self.logs = logs
        self.postgres: EmbeddedPostgres | None = None
        # Bound, not listening: it keeps the stack's port; each service process listens on a
        # socket of its own on that port (DR-13).
        self.listener: socket.socket | None = None
        self.children: list[tuple[str, Process]] = []
        self.services: list[Process] = []
        # Our copy of each service process's socket until that process listens on it: the
        # only way to tell that every process serves (the probes reach listening ones only).
        self._not_listening: dict[Process, socket.socket] = {}
        self._opened: list[IO[bytes]] = []

    # ------------------------------------------------------------------ the parts
    def start_postgres(self, data_dir: Path, database: str) -> str:
        """An embedded Postgres for this stack; its superuser URL on `database`."""
        self.postgres = EmbeddedPostgres(data_dir, database)
        return self.postgres.url

    def listen(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """The port the service processes listen on, each on a socket of its own (with
        uvicorn's backlog, 2048: each listens itself); its http:// URL."""
        # A plain bind first: it fails while anything listens on the port (a stack left over
        # from a killed run would otherwise join the new one's spread silently).
        listening_socket(host, port, backlog=None).close()
        self.listener = listening_socket(
            host, port, backlog=None, reuse_port=True, reuse_address=False
        )
        return f"http://{host}:{self.port}"

    @property
    def port(self) -> int:
        """The stack's port, which every service process listens on."""
        assert self.listener is not None, "listen() first"
        port: int = self.listener.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        assert self.listener is not None, "listen() first"
        return f"http://{self.listener.getsockname()[0]}:{self.port}"

    def start_sandbox(
        self, *, port: int = 0, redirect_uris: Iterable[str], state_file: Path | None = None
    ) -> str:
        """`calendly-connect sandbox` registering the stack's OAuth client; its URL, which the
        services started from now on use as Calendly."""
        argv = [*CLI, "sandbox", "--port", str(port)]
        argv += ["--client-id", self.env["CALENDLY_OAUTH_CLIENT_ID"]]
        if state_file is not None:
            # Sandbox users, grants and meetings survive a restart, like the database does.
            argv += ["--state-file", str(state_file)]
        for uri in redirect_uris:
            argv += ["--redirect-uri", uri]
        log = self._log("sandbox")
        # The secret and key travel in the environment, never on a command line.
        proc = subprocess.Popen(  # noqa: S603 - our own CLI, fixed argv
            argv, env=self.env, stdout=subprocess.PIPE, stderr=log
        )
        self.children.append(("sandbox", proc))
        first = _first_line_then_drain(proc, log, seconds=30.0)
        if not first.startswith(SANDBOX_READY):
            raise RuntimeError("the sandbox did not start (is the port free? see SANDBOX_PORT)")
        url = first.removeprefix(SANDBOX_READY).strip()
        self.env["CALENDLY_AUTH_BASE_URL"] = self.env["CALENDLY_API_BASE_URL"] = url
        return url

    def migrate(self) -> None:
        """`calendly-connect migrate` against the stack's database; RuntimeError if it fails."""
        log = self._log("migrate")
        result = subprocess.run(  # noqa: S603 - our own CLI, fixed argv
            [*CLI, "migrate"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            check=False,
        )
        if result.returncode != 0:
            if log is None:
                raise RuntimeError("migrations failed (see above)")
            log.flush()
            raise RuntimeError(f"migrations failed: {Path(log.name).read_text(errors='replace')}")

    def start_service(self, **overrides: str) -> Process:
        """One more `calendly-connect serve --fd` process on the stack's port."""
        return self.start_on_socket("service", [*CLI, "serve", "--fd", "{fd}"], **overrides)

    def start_services(self, count: int, **overrides: str) -> list[Process]:
        return [self.start_service(**overrides) for _ in range(count)]

    def start_on_socket(self, name: str, argv: list[str], **overrides: str) -> Process:
        """Another server process on the stack's port (`{fd}` in argv is its socket's
        number); it counts as a service process.

        Each gets a socket of its own on the port (SO_REUSEPORT), which only it holds and
        which it starts listening on once it can serve (uvicorn listens after its start-up):
        the kernel spreads new connections evenly over the processes that listen (one shared
        socket gave 61 % of 10,000 streams to one of two, issue 17), and a process that dies
        takes its socket out of the spread (connections still queued on it are reset, as a
        crashed server's are; Calendly retries a delivery that got no answer). This process
        keeps a copy only until it sees the child listen (`wait_ready` and `check_running`
        look), never for long after: a copy would keep a dead child's socket in the
        spread, its connections never answered."""
        assert self.listener is not None, "listen() first"
        host, port = self.listener.getsockname()[:2]
        own = listening_socket(host, port, backlog=None, reuse_port=True)
        try:
            fd = own.fileno()
            argv = [arg.replace("{fd}", str(fd)) for arg in argv]
            proc = self._start(name, argv, overrides, fd)
        except BaseException:
            own.close()
            raise
        self._not_listening[proc] = own
        self.services.append(proc)
        return proc

    def start_worker(self, **overrides: str) -> Process:
        """`calendly-connect worker`."""
        return self._start("worker", [*CLI, "worker"], overrides)

    def start_host_webhooks(self, **overrides: str) -> Process:
        """`calendly-connect host-webhooks run`: the host webhooks' dispatcher (DR-34)."""
        return self._start("host-webhooks", [*CLI, "host-webhooks", "run"], overrides)

    # ------------------------------------------------------------------ watching
    def wait_ready(
        self, url: str | None = None, *, answers_each: int = 1, seconds: float = 60.0
    ) -> None:
        """Until every service process listens, then until the services answer ready,
        `answers_each` times per process in a row; RuntimeError if a child stops or time runs
        out. Probes alone could pass while a process still starts: the kernel sends them to
        the processes that listen, which may be only the first."""
        deadline = time.monotonic() + seconds
        while self._still_starting():
            self.check_running()
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"{len(self._not_listening)} service process(es) did not start listening "
                    f"within {seconds:.0f} s"
                )
            time.sleep(0.05)
        answers = answers_each * max(1, len(self.services))
        wait_ready(
            url or self.url,
            self.services,
            answers=answers,
            seconds=max(1.0, deadline - time.monotonic()),
            check=self.check_running,
        )

    def _still_starting(self) -> bool:
        """Whether a service process has yet to listen; our copy of each socket that now
        listens (or whose process ended) is closed here."""
        for proc, own in list(self._not_listening.items()):
            if proc.poll() is not None or own.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                self._release(proc)
        return bool(self._not_listening)

    def _release(self, proc: Process) -> None:
        own = self._not_listening.pop(proc, None)
        if own is not None:
            own.close()

    def check_running(self) -> None:
        """RuntimeError naming the first child that stopped (and where its error is). Our
        copies of the sockets of processes that now listen, or ended, are let go here too:
        whoever watches the stack (`dev` every half second, `wait_ready`) keeps that short."""
        self._still_starting()
        for name, proc in self.children:
            code = proc.poll()
            if code is not None:
                where = "its error is above" if self.logs is None else f"see {self.logs}"
                raise RuntimeError(f"{name} stopped unexpectedly (exit {code}; {where})")

    # ------------------------------------------------------------------ stopping
    def stop_services(self) -> None:
        for proc in self.services:
            self._release(proc)
        stop_processes(self.services)
        self.children = [(n, p) for n, p in self.children if p not in self.services]
        self.services = []

    def forget(self, proc: Process) -> None:
        """Stop watching a child that was stopped on purpose (a fault a test injected)."""
        self._release(proc)
        self.children = [(n, p) for n, p in self.children if p is not proc]
        self.services = [p for p in self.services if p is not proc]

    def stop(self) -> None:
        """Every child, the socket, then Postgres."""
        for proc in list(self._not_listening):
            self._release(proc)
        stop_processes(proc for _, proc in self.children)
        self.children, self.services = [], []
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for handle in self._opened:
            handle.close()
        self._opened = []
        if self.postgres is not None:
            self.postgres.close()
            self.postgres = None

    # ------------------------------------------------------------------ helpers
    def _log(self, name: str) -> IO[bytes] | None:
        if self.logs is None:
            return None
        handle = (self.logs / f"{len(self._opened) + 1:02d}-{name}.log").open("ab")
        self._opened.append(handle)
        return handle

    def _start(
        self, name: str, argv: list[str], overrides: Mapping[str, str], *fds: int
    ) -> Process:
        log = self._log(name)
        proc = subprocess.Popen(  # noqa: S603 - our own CLI or modules, fixed argv
            argv,
            env={**self.env, **overrides},
            pass_fds=fds,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
        )
        self.children.append((name, proc))
        return proc


def _first_line_then_drain(proc: Process, log: IO[bytes] | None, *, seconds: float) -> str:
    """The first line `proc` prints (waiting up to `seconds`); the rest goes on into `log`
    (or nowhere): closing the pipe would kill it with EPIPE on its next line."""
    assert proc.stdout is not None
    stream = proc.stdout
    first: queue.Queue[str] = queue.Queue(maxsize=1)

    def pump() -> None:
        first.put(stream.readline().decode(errors="replace"))
        for line in stream:
            if log is not None:
                log.write(line)
                log.flush()

    threading.Thread(target=pump, daemon=True).start()
    try:
        return first.get(timeout=seconds)
    except queue.Empty:
        return ""
