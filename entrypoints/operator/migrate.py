"""`calendly-connect migrate`: apply pending migrations and grant the runtime role its rights."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping, Sequence

import psycopg

from adapters.postgres.migrations import MigrationError, migrate, pending
from entrypoints.arguments import fail
from entrypoints.settings import ConfigError, load_database_settings


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Needs only the database's settings (DATABASE_URL, DATABASE_RUNTIME_ROLE) from `environ`."""
    parser = argparse.ArgumentParser(
        prog="calendly-connect migrate",
        description="Apply pending migrations under an advisory lock (safe to run concurrently).",
    )
    parser.add_argument("--check", action="store_true", help="only list what is pending")
    args = parser.parse_args(argv)
    try:
        database = load_database_settings(environ)
    except ConfigError as exc:
        for problem in exc.problems:
            fail(problem)
        return 2
    url, role = database.url.reveal(), database.runtime_role
    try:
        if args.check:
            waiting = asyncio.run(pending(url))
            for m in waiting:
                print(f"pending: {m.version:04d}_{m.name}")
            print(f"{len(waiting)} migration(s) pending")
            return 1 if waiting else 0
        applied = asyncio.run(
            migrate(url, role, warn=lambda text: print(f"warning: {text}", file=sys.stderr))
        )
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
