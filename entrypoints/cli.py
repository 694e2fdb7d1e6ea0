"""`calendly-connect`: the command line of the service, routing each command to its module.

The runtime is in entrypoints/service/ (serve, worker, host-webhooks run), the operator's
tools in entrypoints/operator/ (migrate, doctor, repair-connections, api-keys, host-webhooks
status | replay | retry | enable, rotate-keys), the developer's in entrypoints/developer/
(dev). Each command is imported only when it runs, so a quick command never pays for the web stack.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

COMMANDS = {
    "dev": "run everything locally: embedded Postgres, the sandbox, N service processes",
    "serve": "run the HTTP service (configuration from the environment; see .env.example)",
    "worker": "run the maintenance worker (token refresh, subscription repair, sync)",
    "migrate": "apply pending database migrations (DATABASE_URL, DATABASE_RUNTIME_ROLE)",
    "doctor": "check the deployment and say how to fix what is wrong (--json, --strict)",
    "repair-connections": "fill missing Calendly user URIs and ensure subscriptions (--dry-run)",
    "api-keys": "create, list and revoke keys of the server API (/v1) for the host's back end",
    "host-webhooks": "deliver host webhooks (run), and status | replay | retry | enable",
    "rotate-keys": "re-seal stored secrets under the first TOKEN_ENCRYPTION_KEY (--check)",
    "sandbox": "run the Calendly sandbox (a local Calendly look-alike); see --help",
}

# A command: its arguments and the environment it reads its settings from; its exit code.
Command = Callable[[Sequence[str], Mapping[str, str]], int]


def cmd_serve(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    from entrypoints.service.server import main as serve_main

    return serve_main(argv, environ)


def cmd_worker(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    from entrypoints.service.worker import main as worker_main

    return worker_main(argv, environ)


def cmd_migrate(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    from entrypoints.operator.migrate import main as migrate_main

    return migrate_main(argv, environ)


def cmd_doctor(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    from entrypoints.operator.doctor import main as doctor_main

    return doctor_main(argv, environ)


def cmd_repair(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    from entrypoints.operator.repair import main as repair_main

    return repair_main(argv, environ)


def cmd_api_keys(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    from entrypoints.operator.api_keys import main as api_keys_main

    return api_keys_main(argv, environ)


def cmd_host_webhooks(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    # `run` is the runtime's (the dispatcher); the rest are the operator's.
    if argv and argv[0] == "run":
        from entrypoints.service.host_webhooks import main as run_main

        return run_main(argv[1:], environ)
    from entrypoints.operator.host_webhooks import main as host_webhooks_main

    return host_webhooks_main(argv, environ)


def cmd_rotate_keys(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    from entrypoints.operator.rotate_keys import main as rotate_keys_main

    return rotate_keys_main(argv, environ)


def cmd_dev(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    from entrypoints.developer.devstack import main as dev_main

    return dev_main(argv, environ)


def cmd_sandbox(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    # The sandbox is its own package (it reads its own options); the CLI is the one place in
    # the core that starts it.
    from calendly_sandbox import main as sandbox_main

    return sandbox_main(list(argv))


HANDLERS: dict[str, Command] = {
    "doctor": cmd_doctor,
    "repair-connections": cmd_repair,
    "api-keys": cmd_api_keys,
    "host-webhooks": cmd_host_webhooks,
    "rotate-keys": cmd_rotate_keys,
    "dev": cmd_dev,
    "serve": cmd_serve,
    "worker": cmd_worker,
    "migrate": cmd_migrate,
    "sandbox": cmd_sandbox,
}


# What `main` answers when Ctrl-C stopped a command (128 + SIGINT, as a shell reports it).
INTERRUPTED = 128 + signal.SIGINT


def run() -> None:
    """The program (`calendly-connect`, `python -m entrypoints.cli`): `main`'s exit code; a
    command stopped by Ctrl-C ends by SIGINT itself, so that a calling shell or script knows
    it was interrupted and stops too, as Python does for an uncaught KeyboardInterrupt."""
    code = main()
    if code == INTERRUPTED:
        # What Python does before it ends a program that Ctrl-C stopped: what was printed
        # (a pipe's buffer too) and logged goes out first.
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        logging.shutdown()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    raise SystemExit(code)


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
    # Before anything imports the metrics (the settings do, through the Calendly adapter).
    problem = metrics_directory_problem(os.environ)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        from entrypoints.settings import process_environment

        # The environment is read here, once; each command loads its settings from it.
        return HANDLERS[args.command](argv[1:], process_environment())
    except KeyboardInterrupt:
        # Ctrl-C that no command answered itself: before one took it over (serve, worker, dev
        # and host-webhooks run stop cleanly on it once running; one still importing the web
        # stack does not), or in one that leaves it to Python (migrate, doctor, ...). One
        # line, not a traceback; `run` then ends the process as interrupted.
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def metrics_directory_problem(environ: Mapping[str, str]) -> str | None:
    """prometheus_client opens its files in PROMETHEUS_MULTIPROC_DIR as soon as the metrics are
    imported, before any command reads its settings: a directory that cannot hold them would
    end every command in a traceback. Said here, plainly, instead."""
    value = (environ.get("PROMETHEUS_MULTIPROC_DIR") or "").strip()
    if not value:
        return None
    path = Path(value)
    if not path.is_dir():
        return (
            f"PROMETHEUS_MULTIPROC_DIR is {value!r}, which is not a directory: create it, empty, "
            "before the processes start (a tmpfs in a container), or unset it"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        return f"PROMETHEUS_MULTIPROC_DIR {value!r} is not writable by this process's user"
    return None


if __name__ == "__main__":
    run()
