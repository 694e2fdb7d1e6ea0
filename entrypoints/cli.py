"""`calendly-connect`: the command line of the service."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Callable, Sequence

COMMANDS = {
    "dev": "run everything locally: embedded Postgres, the sandbox, N service processes",
    "serve": "run the HTTP service (configuration from the environment; see .env.example)",
    "worker": "run the maintenance worker (token refresh, subscription repair, sync)",
    "migrate": "apply pending database migrations (DATABASE_URL, DATABASE_RUNTIME_ROLE)",
    "doctor": "check the deployment and say how to fix what is wrong (--json, --strict)",
    "repair-connections": "fill missing Calendly user URIs and ensure subscriptions (--dry-run)",
    "sandbox": "run the Calendly sandbox (a local Calendly look-alike); see --help",
}
ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
WHOLE_NUMBER = re.compile(r"\s*[+-]?[0-9]+\s*")
HIGHEST_PORT = 65535


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def port_number(*, lowest: int = 1) -> Callable[[str], int]:
    """An argparse type: a TCP port from `lowest` (0 lets the system pick a free one) up."""

    def parse(text: str) -> int:
        if not WHOLE_NUMBER.fullmatch(text) or not lowest <= int(text) <= HIGHEST_PORT:
            picks = " (0 picks a free one)" if lowest == 0 else ""
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a port: use a whole number from {lowest} to {HIGHEST_PORT}{picks}"
            )
        return int(text)

    return parse


def file_descriptor(text: str) -> int:
    """An argparse type: a file descriptor number (whether it is open is checked on use)."""
    if not WHOLE_NUMBER.fullmatch(text) or int(text) < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a file descriptor: use a whole number from 0 up"
        )
    return int(text)


def cmd_migrate(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="calendly-connect migrate",
        description="Apply pending migrations under an advisory lock (safe to run concurrently).",
    )
    parser.add_argument("--check", action="store_true", help="only list what is pending")
    args = parser.parse_args(argv)
    url = os.environ.get("DATABASE_URL", "").strip()
    role = os.environ.get("DATABASE_RUNTIME_ROLE", "calendly_app").strip()
    if not url:
        return fail("DATABASE_URL is not set: give the connection URL of the Postgres database")
    from entrypoints.settings import database_url_problem

    if (problem := database_url_problem(url)) is not None:
        return fail(problem)
    if not ROLE.fullmatch(role):
        return fail("DATABASE_RUNTIME_ROLE must be a plain lower-case SQL identifier")

    import psycopg

    from adapters.postgres.migrations import MigrationError, migrate, pending

    try:
        if args.check:
            waiting = asyncio.run(pending(url))
            for m in waiting:
                print(f"pending: {m.version:04d}_{m.name}")
            print(f"{len(waiting)} migration(s) pending")
            return 1 if waiting else 0
        applied = asyncio.run(migrate(url, role))
    except MigrationError as exc:
        return fail(str(exc), 1)
    except psycopg.OperationalError as exc:
        return fail(f"cannot reach the database: {exc.args[0] if exc.args else exc}", 1)
    except psycopg.Error as exc:  # its text may quote DATABASE_URL: name only the kind
        return fail(f"the database refused: {type(exc).__name__} (DATABASE_URL not shown)", 1)
    for m in applied:
        print(f"applied: {m.version:04d}_{m.name}")
    print(f"database is up to date ({len(applied)} applied now); runtime role: {role}")
    return 0


def cmd_serve(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="calendly-connect serve", description="Run the HTTP service."
    )
    parser.add_argument("--host", help="override HOST")
    parser.add_argument("--port", type=port_number(), help="override PORT")
    parser.add_argument(
        "--fd",
        type=file_descriptor,
        help="serve on this inherited, listening socket (used by `dev`)",
    )
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    if args.host:
        environ["HOST"] = args.host
    if args.port is not None:
        environ["PORT"] = str(args.port)

    from adapters.postgres.roles import UnsafeDatabaseRole
    from domain.errors import StorageUnavailable
    from entrypoints.logging import configure_logging, register_secret
    from entrypoints.server import run_server, serve
    from entrypoints.settings import ConfigError, load_settings

    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        return fail(str(exc))
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    for value in settings.secret_values():
        register_secret(value)
    sockets = None
    if args.fd is not None:
        import socket

        try:
            sockets = [socket.socket(fileno=args.fd)]
        except OSError as exc:
            return fail(f"--fd {args.fd} is not an open socket: {exc}")
    try:
        run_server(serve(settings, sockets=sockets))
    except UnsafeDatabaseRole as exc:
        return fail(str(exc), 1)
    except (StorageUnavailable, OSError) as exc:
        return fail(f"cannot start: {exc}", 1)
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_worker(argv: Sequence[str]) -> int:
    argparse.ArgumentParser(
        prog="calendly-connect worker",
        description="Keep every connection healthy: proactive token refresh, subscription "
        "repair, reconciliation and polling for free plans. Safe to run many at once.",
    ).parse_args(argv)
    from entrypoints.logging import configure_logging, register_secret
    from entrypoints.settings import ConfigError, load_settings
    from entrypoints.worker import run_worker

    try:
        settings = load_settings(os.environ)
    except ConfigError as exc:
        return fail(str(exc))
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    for value in settings.secret_values():
        register_secret(value)
    try:
        asyncio.run(run_worker(settings))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        return fail(f"cannot start: {exc}", 1)
    return 0


def cmd_sandbox(argv: Sequence[str]) -> int:
    # The sandbox is its own package; the CLI is the one place in the core that starts it.
    from calendly_sandbox import main as sandbox_main

    return sandbox_main(list(argv))


def cmd_dev(argv: Sequence[str]) -> int:
    from entrypoints.devstack import main as dev_main

    return dev_main(argv)


def cmd_doctor(argv: Sequence[str]) -> int:
    from entrypoints.doctor import main as doctor_main

    return doctor_main(argv)


def cmd_repair(argv: Sequence[str]) -> int:
    from entrypoints.doctor import repair_main

    return repair_main(argv)


HANDLERS: dict[str, Callable[[Sequence[str]], int]] = {
    "doctor": cmd_doctor,
    "repair-connections": cmd_repair,
    "dev": cmd_dev,
    "serve": cmd_serve,
    "worker": cmd_worker,
    "migrate": cmd_migrate,
    "sandbox": cmd_sandbox,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="calendly-connect",
        description="Let each user of a web app connect their own Calendly account.",
        epilog="commands:\n" + "\n".join(f"  {name:<10} {text}" for name, text in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to run")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    return HANDLERS[args.command](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
