"""`make run`: the whole product on one machine, from nothing, in one command.

Without configuration: an embedded Postgres (data in `.data/`, reused across runs), migrations,
the Calendly sandbox, and N service processes sharing one listening socket, with local-only
secrets generated once into `.data/secrets.json`. With `DATABASE_URL` and the Calendly
credentials in the environment: migrations and the service processes only, against those.
Ctrl-C (or SIGTERM) stops every child.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REAL_CALENDLY = (
    "CALENDLY_OAUTH_CLIENT_ID",
    "CALENDLY_OAUTH_CLIENT_SECRET",
    "CALENDLY_WEBHOOK_SIGNING_KEY",
)
SANDBOX_CLIENT_ID = "calendly-connect-local"


def say(message: str) -> None:
    print(message, flush=True)


def complain(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def local_secrets(data_dir: Path) -> dict[str, str]:
    """Secrets for local use only, made once and kept (mode 0600) beside the local database."""
    path = data_dir / "secrets.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored
    made = {
        "TOKEN_ENCRYPTION_KEY": "local1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "JWT_SECRET": secrets.token_urlsafe(48),
        "CALENDLY_OAUTH_CLIENT_SECRET": secrets.token_urlsafe(32),
        "CALENDLY_WEBHOOK_SIGNING_KEY": secrets.token_urlsafe(32),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(made, handle, indent=2)
    return made


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


@dataclass
class Stack:
    """The child processes of one run, stopped together."""

    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    pg_server: Any = None

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str], **kw: Any
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env=env, **kw)  # noqa: S603 - our own CLI, fixed argv
        self.children.append((name, proc))
        return proc

    def stop(self) -> None:
        for _, proc in self.children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in self.children:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.pg_server is not None:
            self.pg_server.cleanup()
            self.pg_server = None


def start_embedded_postgres(stack: Stack, data_dir: Path) -> str:
    # pgserver asks platformdirs for a runtime dir that containers often lack; harmless.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from pgserver import get_server  # type: ignore[attr-defined]

    pgdata = data_dir / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    say(f"• starting the embedded Postgres (data in {pgdata})")
    stack.pg_server = get_server(pgdata, cleanup_mode="stop")
    admin = str(stack.pg_server.get_uri())
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'calendly_connect'")
        if exists.fetchone() is None:
            conn.execute("CREATE DATABASE calendly_connect")
    return with_database(admin, "calendly_connect")


def start_sandbox(
    stack: Stack, env: dict[str, str], port: int, redirect_uris: list[str], state_file: Path
) -> str:
    argv = [
        sys.executable,
        "-m",
        "entrypoints.cli",
        "sandbox",
        "--port",
        str(port),
        "--client-id",
        env["CALENDLY_OAUTH_CLIENT_ID"],
        # Sandbox users, grants and meetings survive a restart, like the database does.
        "--state-file",
        str(state_file),
    ]
    for uri in redirect_uris:
        argv += ["--redirect-uri", uri]
    # The secret and key travel in the environment, never on a command line.
    proc = stack.spawn("sandbox", argv, env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.readline().decode()
    if not first.startswith("Calendly sandbox listening on "):
        raise RuntimeError("the sandbox did not start (is the port free? see SANDBOX_PORT)")
    url = first.rsplit(" ", 1)[1].strip()
    # Keep reading what it prints: closing the pipe would kill it with EPIPE on its next line.
    threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
    return url


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def run_migrations(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "migrate"], env=env, check=False
    )
    if result.returncode != 0:
        raise RuntimeError("migrations failed (see above)")


def wait_ready(url: str, seconds: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the service at {url} did not become ready")


def data_folder(text: str) -> Path:
    """An argparse type: a folder for the local database and secrets, made if missing."""
    path = Path(text)
    for folder in (path, *path.parents):
        if folder.exists() and not folder.is_dir():
            raise argparse.ArgumentTypeError(
                f"{text!r} cannot hold the local database: {folder} exists and is not a "
                "directory; give a folder (it is created if missing)"
            )
    return path


def build_parser() -> argparse.ArgumentParser:
    from entrypoints.cli import port_number

    def env(name: str, default: str) -> str:
        # Strings, so that argparse checks them as it checks the command line.
        return os.environ.get(name, "").strip() or default

    any_port = port_number(lowest=0)
    parser = argparse.ArgumentParser(
        prog="calendly-connect dev",
        description="Run everything locally (embedded Postgres, sandbox, service).",
    )
    parser.add_argument("--workers", type=int, default=env("WORKERS", "1"))
    parser.add_argument("--host", default=env("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=any_port, default=env("PORT", "8000"))
    parser.add_argument("--sandbox-port", type=any_port, default=env("SANDBOX_PORT", "8765"))
    parser.add_argument("--data-dir", type=data_folder, default=env("DATA_DIR", ".data"))
    return parser


def main(argv: Any = None) -> int:
    from entrypoints.settings import ConfigError

    args = build_parser().parse_args(argv)
    if not 1 <= args.workers <= 32:
        complain("WORKERS must be between 1 and 32")
        return 2
    stack = Stack()

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Explicit handlers: a shell that starts us in the background would otherwise leave
    # SIGINT ignored, and Ctrl-C must always stop every child.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return run(args, stack)
    except KeyboardInterrupt:
        say("\n• stopping")
        return 0
    except ConfigError as exc:
        complain(str(exc))
        return 2
    except (RuntimeError, OSError) as exc:
        complain(str(exc))
        return 1
    finally:
        stack.stop()


def run(args: argparse.Namespace, stack: Stack) -> int:
    from entrypoints.settings import load_settings

    env = dict(os.environ)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((args.host, args.port))
    except OSError as exc:
        raise RuntimeError(f"cannot listen on {args.host}:{args.port} ({exc}); set PORT") from exc
    listener.listen(1024)
    port = listener.getsockname()[1]
    public = env.get("PUBLIC_BASE_URL") or f"http://{args.host}:{port}"
    env.setdefault("PUBLIC_BASE_URL", public)
    env.setdefault("LOG_FORMAT", "console")
    sandbox_url = None
    if all(env.get(name) for name in REAL_CALENDLY) and env.get("DATABASE_URL"):
        say("• using DATABASE_URL and the Calendly credentials from the environment")
    else:
        made = local_secrets(args.data_dir)
        for name in ("TOKEN_ENCRYPTION_KEY", "JWT_SECRET"):
            env.setdefault(name, made[name])
        if not env.get("DATABASE_URL"):
            env["DATABASE_URL"] = start_embedded_postgres(stack, args.data_dir)
        if not all(env.get(name) for name in REAL_CALENDLY):
            env["CALENDLY_OAUTH_CLIENT_ID"] = SANDBOX_CLIENT_ID
            env["CALENDLY_OAUTH_CLIENT_SECRET"] = made["CALENDLY_OAUTH_CLIENT_SECRET"]
            env["CALENDLY_WEBHOOK_SIGNING_KEY"] = made["CALENDLY_WEBHOOK_SIGNING_KEY"]
            redirect = f"{public}/oauth/calendly/callback"
            say("• starting the Calendly sandbox")
            sandbox_url = start_sandbox(
                stack, env, args.sandbox_port, [redirect], args.data_dir / "sandbox.json"
            )
            env["CALENDLY_AUTH_BASE_URL"] = sandbox_url
            env["CALENDLY_API_BASE_URL"] = sandbox_url
        env.setdefault("DEV_LOGIN_ENABLED", "true")
    # What the service processes will read, checked once here: one clear report, not one per
    # process, and the settings check sees the address the shared socket really listens on.
    env["HOST"], env["PORT"] = args.host, str(port)
    load_settings(env)
    say("• applying migrations")
    run_migrations(env)
    say(f"• starting {args.workers} service process(es) and the maintenance worker")
    for n in range(args.workers):
        stack.spawn(
            f"service-{n + 1}",
            [sys.executable, "-m", "entrypoints.cli", "serve", "--fd", str(listener.fileno())],
            env,
            pass_fds=(listener.fileno(),),
        )
    stack.spawn("worker", [sys.executable, "-m", "entrypoints.cli", "worker"], env)
    wait_ready(public)
    say("")
    say(f"  Open {public}  — sign in as a demo user, then Settings → Calendar → Connect.")
    if sandbox_url:
        say(f"  Calendly sandbox: {sandbox_url}/_sandbox/  (book meetings for a connected user)")
    say("  Ctrl-C stops everything.")
    say(f"READY url={public} sandbox={sandbox_url or '-'} workers={args.workers}")
    while True:
        for name, proc in stack.children:
            code = proc.poll()
            if code is not None:
                raise RuntimeError(f"{name} stopped unexpectedly (exit {code})")
        time.sleep(0.5)
