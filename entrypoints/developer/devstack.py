"""`make run`: the whole product on one machine, from nothing, in one command.

Without configuration: an embedded Postgres (data in `.data/`, reused across runs), migrations,
the Calendly sandbox, and N service processes sharing one listening socket, with local-only
secrets generated once into `.data/secrets.json`. With `DATABASE_URL` and the Calendly
credentials in the environment: migrations and the service processes only, against those.
Ctrl-C (or SIGTERM) stops every child.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from entrypoints.arguments import data_folder, fail, port_number
from entrypoints.developer.example import Example, start_example
from entrypoints.developer.launcher import LocalStack, new_secrets, wait_ready
from entrypoints.settings import ConfigError, environment_value, load_settings

REAL_CALENDLY: Final = (
    "CALENDLY_OAUTH_CLIENT_ID",
    "CALENDLY_OAUTH_CLIENT_SECRET",
    "CALENDLY_WEBHOOK_SIGNING_KEY",
)
SANDBOX_CLIENT_ID: Final = "calendly-connect-local"
DATABASE: Final = "calendly_connect"


def say(message: str) -> None:
    print(message, flush=True)


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
        return fail(str(exc))
    except (RuntimeError, OSError) as exc:
        return fail(str(exc), 1)
    finally:
        stack.stop()


def run(args: argparse.Namespace, stack: LocalStack) -> int:
    env = stack.env
    try:
        local = stack.listen(args.host, args.port)
    except OSError as exc:
        raise RuntimeError(f"cannot listen on {args.host}:{args.port} ({exc}); set PORT") from exc
    public = env.get("PUBLIC_BASE_URL") or local
    env.setdefault("PUBLIC_BASE_URL", public)
    public = _with_root_path(public, env)
    env.setdefault("LOG_FORMAT", "console")
    sandbox_url = None
    if all(env.get(name) for name in REAL_CALENDLY) and env.get("DATABASE_URL"):
        say("• using DATABASE_URL and the Calendly credentials from the environment")
    else:
        made = local_secrets(args.data_dir)
        for name in ("TOKEN_ENCRYPTION_KEY", "JWT_SECRET"):
            env.setdefault(name, made[name])
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
        env.setdefault("DEV_LOGIN_ENABLED", "true")
    example: Example | None = None
    if args.example:
        say("• starting the example host app (examples/host-app)")
        example = start_example(
            stack, host="127.0.0.1", port=args.example_port, data_dir=args.data_dir / "host-app"
        )
    # What the service processes will read, checked once here: one clear report, not one per
    # process, and the settings check sees the address the shared socket really listens on.
    env["HOST"], env["PORT"] = args.host, str(stack.port)
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
    # Asked where it listens: PUBLIC_BASE_URL may be a proxy or tunnel not routed yet.
    wait_ready(local, stack.services)
    say("")
    say(f"  Open {public}  — sign in as a demo user, then Settings → Calendar → Connect.")
    if sandbox_url:
        say(f"  Calendly sandbox: {sandbox_url}/_sandbox/  (book meetings for a connected user)")
    if example:
        say(f"  Example host app: {example.url}  — its own sign-in, Calendly through the service.")
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
