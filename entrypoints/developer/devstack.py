"""`make run`: the whole product on one machine, from nothing, in one command.

Without configuration: an embedded Postgres (data in `.data/`, reused across runs), migrations,
the Calendly sandbox, and N service processes on one port (a socket each, DR-13), with local-only
secrets generated once into `.data/secrets.json`. With `DATABASE_URL` and the Calendly
credentials in the environment: migrations and the service processes only, against those.
Ctrl-C (or SIGTERM) stops every child.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Final
from urllib.parse import urlsplit

from entrypoints.arguments import data_folder, fail, port_number
from entrypoints.developer.example import Example, start_example
from entrypoints.developer.launcher import LocalStack, new_secrets
from entrypoints.settings import VARIABLES, ConfigError, environment_value, load_settings

REAL_CALENDLY: Final = (
    "CALENDLY_OAUTH_CLIENT_ID",
    "CALENDLY_OAUTH_CLIENT_SECRET",
    "CALENDLY_WEBHOOK_SIGNING_KEY",
)
SANDBOX_CLIENT_ID: Final = "calendly-connect-local"
DATABASE: Final = "calendly_connect"
# In the data folder: held (flock) by the `dev` that uses it, with its pid and URL inside.
LOCK_FILE: Final = "dev.lock"
# In the data folder while the stack runs (mode 0600): its settings, for `make doctor`.
STACK_ENV_FILE: Final = "stack.env"
# Stand-ins, for the settings check before anything starts, for what `dev` fills in later.
_PLACEHOLDER_DATABASE_URL: Final = "postgresql://localhost/" + DATABASE


class DataFolderInUse(RuntimeError):
    """Another `dev` holds the data folder's lock."""


def say(message: str) -> None:
    print(message, flush=True)


def metrics_environment(data_dir: Path) -> dict[str, str]:
    """Prometheus metrics for the local stack (DR-39): the processes' shared directory, emptied
    for this run (the data folder's lock makes it this stack's alone), and a fresh token."""
    directory = data_dir / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return {
        "METRICS_ENABLED": "true",
        "METRICS_TOKEN": secrets.token_urlsafe(32),
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
    }


def local_secrets(data_dir: Path) -> dict[str, str]:
    """Secrets for local use only, made once and kept (mode 0600) beside the local database."""
    path = data_dir / "secrets.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored
    made = new_secrets()
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(made, handle, indent=2)
    return made


@contextlib.contextmanager
def data_folder_lock(data_dir: Path) -> Iterator[IO[str]]:
    """Hold `data_dir`'s lock while the stack runs: two stacks on one folder would share one
    Postgres and one sandbox state file. The lock is the kernel's (flock), so a `dev` that was
    killed leaves none behind; the file only says who holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "pid unknown"
            raise DataFolderInUse(
                f"another `calendly-connect dev` ({holder}) is using the data folder "
                f"{data_dir} (its Postgres and sandbox state); stop it first, or give this one "
                f"its own folder: DATA_DIR={data_dir}-2 make run (or dev --data-dir)"
            ) from None
        _describe_holder(handle, f"pid {os.getpid()}")
        yield handle
    finally:
        handle.close()


def _describe_holder(handle: IO[str], text: str) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(text + "\n")
    handle.flush()


def write_stack_env(data_dir: Path, env: Mapping[str, str]) -> Path:
    """The settings the stack's processes run with, as `KEY='value'` lines a shell can source
    (mode 0600, like secrets.json: they include the local secrets): `make doctor` reads them."""
    path = data_dir / STACK_ENV_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(
            "# Written by `calendly-connect dev` while its stack runs; read by `make doctor`.\n"
        )
        for name in VARIABLES:
            value = env.get(name)
            if value:
                handle.write(f"{name}={shlex.quote(value)}\n")
    return path


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    def env(name: str, default: str) -> str:
        # Strings, so that argparse checks them as it checks the command line.
        return environment_value(environ, name) or default

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
    # `make example`: the example host app (examples/host-app/) beside the stack, trusted by it.
    parser.add_argument("--example", action="store_true", help="also run the example host app")
    parser.add_argument("--example-port", type=any_port, default=env("EXAMPLE_PORT", "8090"))
    return parser


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    args = build_parser(environ).parse_args(argv)
    if not 1 <= args.workers <= 32:
        return fail("WORKERS must be between 1 and 32")
    stack = LocalStack(environ)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        # Once: a second Ctrl-C (or the SIGTERM after it) must not interrupt the stopping
        # itself; the children got the terminal's SIGINT too and stop on their own.
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    # Explicit handlers: a shell that starts us in the background would otherwise leave
    # SIGINT ignored, and Ctrl-C must always stop every child.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with contextlib.ExitStack() as held:
        try:
            if _uses_data_folder(stack.env):
                lock = held.enter_context(data_folder_lock(args.data_dir))
                held.callback((args.data_dir / STACK_ENV_FILE).unlink, missing_ok=True)
            else:
                lock = None
            return run(args, stack, lock)
        except KeyboardInterrupt:
            say("\n• stopping")
            # Ctrl-C is how `make run` is meant to end: a clean stop exits 0, not 130.
            return 0
        except ConfigError as exc:
            return fail(str(exc))
        except (RuntimeError, OSError) as exc:
            return fail(str(exc), 1)
        finally:
            # A second Ctrl-C must not break the stopping: ignored here, and so by what the
            # stopping starts (pg_ctl stop); the children got the terminal's SIGINT already.
            stopping = True
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            stack.stop()
    return 0  # pragma: no cover - every branch above returns


def _uses_data_folder(env: Mapping[str, str]) -> bool:
    """Whether the stack keeps anything in the data folder: not with a database and Calendly
    of its own (it then starts neither the embedded Postgres nor the sandbox)."""
    return not (all(env.get(name) for name in REAL_CALENDLY) and env.get("DATABASE_URL"))


def check_settings(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """The settings the children will read, checked before anything starts: what `dev` fills
    in later (the database, the sandbox's URL) stands in as placeholders. ConfigError lists
    every problem, once."""
    planned = dict(env)
    planned.setdefault("DATABASE_URL", _PLACEHOLDER_DATABASE_URL)
    if not all(env.get(name) for name in REAL_CALENDLY):
        sandbox = f"http://127.0.0.1:{args.sandbox_port or 8765}"
        planned["CALENDLY_AUTH_BASE_URL"] = planned["CALENDLY_API_BASE_URL"] = sandbox
        for name in REAL_CALENDLY:
            planned.setdefault(name, "placeholder-" + name.lower())
    load_settings(planned)


def run(args: argparse.Namespace, stack: LocalStack, lock: IO[str] | None = None) -> int:
    env = stack.env
    try:
        local = stack.listen(args.host, args.port)
    except OSError as exc:
        raise RuntimeError(f"cannot listen on {args.host}:{args.port} ({exc}); set PORT") from exc
    if lock is not None:
        _describe_holder(lock, f"pid {os.getpid()}, {local}")
    public = env.get("PUBLIC_BASE_URL") or local
    env.setdefault("PUBLIC_BASE_URL", public)
    public = _with_root_path(public, env)
    env.setdefault("LOG_FORMAT", "console")
    # Each request's log line at DEBUG (shown with LOG_LEVEL=DEBUG): at INFO, the page's
    # requests would bury the addresses printed below.
    env.setdefault("REQUEST_LOG_LEVEL", "DEBUG")
    env["HOST"], env["PORT"] = args.host, str(stack.port)
    sandbox_url = None
    if not _uses_data_folder(env):
        check_settings(args, env)
        say("• using DATABASE_URL and the Calendly credentials from the environment")
    else:
        made = local_secrets(args.data_dir)
        for name in ("TOKEN_ENCRYPTION_KEY", "JWT_SECRET"):
            env.setdefault(name, made[name])
        env.setdefault("DEV_LOGIN_ENABLED", "true")
        if "METRICS_ENABLED" not in env:  # /metrics on, behind a token of this stack's own
            env.update(metrics_environment(args.data_dir))
        # Before the database and the sandbox start: a bad setting stops here, said once.
        check_settings(args, env)
        if not env.get("DATABASE_URL"):
            say(f"• starting the embedded Postgres (data in {args.data_dir / 'postgres'})")
            env["DATABASE_URL"] = stack.start_postgres(args.data_dir / "postgres", DATABASE)
        if not all(env.get(name) for name in REAL_CALENDLY):
            env["CALENDLY_OAUTH_CLIENT_ID"] = SANDBOX_CLIENT_ID
            env["CALENDLY_OAUTH_CLIENT_SECRET"] = made["CALENDLY_OAUTH_CLIENT_SECRET"]
            env["CALENDLY_WEBHOOK_SIGNING_KEY"] = made["CALENDLY_WEBHOOK_SIGNING_KEY"]
            say("• starting the Calendly sandbox")
            sandbox_url = stack.start_sandbox(
                port=args.sandbox_port,
                redirect_uris=[f"{public}/oauth/calendly/callback"],
                state_file=args.data_dir / "sandbox.json",
            )
    example: Example | None = None
    if args.example:
        say("• starting the example host app (examples/host-app)")
        example = start_example(
            stack, host="127.0.0.1", port=args.example_port, data_dir=args.data_dir / "host-app"
        )
    # What the service processes will read, as they will read it (checked above already, with
    # placeholders for the database and the sandbox).
    settings = load_settings(env)
    say("• applying migrations")
    stack.migrate()
    say(f"• starting {args.workers} service process(es) and the maintenance worker")
    stack.start_services(args.workers)
    stack.start_worker()
    if settings.host_webhooks.endpoints:
        names = ", ".join(e.name for e in settings.host_webhooks.endpoints)
        say(f"• starting the host webhooks' dispatcher ({names})")
        stack.start_host_webhooks()
    # Asked where it listens: PUBLIC_BASE_URL may be a proxy or tunnel not routed yet. Any
    # child that stops meanwhile ends the wait at once, named (its error is printed above).
    stack.wait_ready(local)
    if lock is not None:  # `make doctor` finds the stack's settings beside its data
        write_stack_env(args.data_dir, env)
    say("")
    say(f"  Open {public}  — sign in as a demo user, then Settings → Calendar → Connect.")
    if sandbox_url:
        say(f"  Calendly sandbox: {sandbox_url}/_sandbox/  (book meetings for a connected user)")
    if example:
        say(f"  Example host app: {example.url}  — its own sign-in, Calendly through the service.")
    if env.get("METRICS_ENABLED") == "true" and lock is not None:
        say(
            f"  Metrics: {local}/metrics  (Authorization: Bearer $METRICS_TOKEN, in "
            f"{args.data_dir / STACK_ENV_FILE})"
        )
    say("  Ctrl-C stops everything.")
    ready = f"READY url={public} local={local} sandbox={sandbox_url or '-'} workers={args.workers}"
    say(ready + (f" example={example.url}" if example else ""))
    while True:
        stack.check_running()
        time.sleep(0.5)


def _with_root_path(public: str, env: Mapping[str, str]) -> str:
    """PUBLIC_BASE_URL as the settings complete it: with ROOT_PATH unless it has a path."""
    try:
        has_path = bool(urlsplit(public).path.strip("/"))
    except ValueError:  # not a URL: the settings refuse it, saying why
        return public
    if has_path:
        return public.rstrip("/")
    return public.rstrip("/") + (env.get("ROOT_PATH") or "").rstrip("/")
