"""`calendly-connect api-keys`: create, list and revoke the server API's keys (DR-30).

Needs only the database's settings (DATABASE_URL, DATABASE_RUNTIME_ROLE): the keys are stored
through the runtime role, outside any tenant, as the service reads them. `create` prints the
key alone on stdout (`KEY=$(calendly-connect api-keys create --name billing)`) and what to
know about it on stderr; only its SHA-256 is stored, so it is shown this once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import psycopg

from adapters.postgres.api_keys import PostgresApiKeyStore
from adapters.system import SecretsRandomness, SystemClock
from domain.api_keys import ApiKey, ApiKeyScope, name_problem
from domain.errors import ApiKeyNotFound, ConcurrentUpdate, StorageUnavailable
from domain.usecases.api_keys import CACHE_SECONDS, CreateApiKey, ListApiKeys, RevokeApiKey
from entrypoints.arguments import fail
from entrypoints.operator.runtime_db import CONNECT_SECONDS, database_settings, runtime_pool
from entrypoints.settings import DatabaseSettings

COLUMNS: Final = ("ID", "NAME", "PREFIX", "SCOPE", "CREATED", "LAST USED", "REVOKED")


class Unavailable(Exception):
    """The database cannot be reached or is not migrated; the message says which."""


def key_name(text: str) -> str:
    """An argparse type: a key's name (1 to 100 printable characters)."""
    problem = name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text.strip()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calendly-connect api-keys",
        description="Keys of the server API (/v1) for the host's back end. Several may be "
        "active at once: create the new one, deploy it, then revoke the old one.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", help="make a key and print it once (stdout: the key alone)"
    )
    create.add_argument("--name", required=True, type=key_name, help="what the key is for")
    create.add_argument(
        "--scope",
        choices=[scope.value for scope in ApiKeyScope],
        default=ApiKeyScope.READ.value,
        help="read: list and read; write: also disconnect, erase, open user sessions "
        "(default: read)",
    )
    listing = actions.add_parser("list", help="every key: name, prefix, scope, use, revocation")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    revoke = actions.add_parser(
        "revoke", help=f"revoke a key (final; refused everywhere within {CACHE_SECONDS:g} s)"
    )
    revoke.add_argument("key", metavar="ID-OR-PREFIX", help="the key's id or its ccsk_ prefix")
    return parser


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    args = _parser().parse_args(argv)
    database = database_settings(environ)
    if database is None:
        return 2
    try:
        return asyncio.run(_run(args, database))
    except Unavailable as exc:
        return fail(str(exc), 1)
    except ApiKeyNotFound as exc:
        return fail(f"{exc}; `calendly-connect api-keys list` shows every key", 1)
    except (StorageUnavailable, ConcurrentUpdate) as exc:
        return fail(str(exc), 1)


async def _run(args: argparse.Namespace, database: DatabaseSettings) -> int:
    await _check_database(database.url.reveal())
    async with runtime_pool(database) as pool:
        store, clock = PostgresApiKeyStore(pool), SystemClock()
        if args.action == "create":
            created = await CreateApiKey(store, clock, SecretsRandomness())(
                args.name, ApiKeyScope(args.scope)
            )
            print(created.secret.reveal())
            key = created.key
            print(
                f"created API key {key.shown} (id {key.id}, scope {key.scope}, name "
                f"{key.name!r}). Store it now: it is shown only this once (only its SHA-256 is "
                "kept). Send it as 'Authorization: Bearer <key>' to /v1.",
                file=sys.stderr,
            )
        elif args.action == "list":
            keys = await ListApiKeys(store)()
            print(_as_json(keys) if args.json else _as_table(keys))
        else:
            done = await RevokeApiKey(store, clock)(args.key)
            key = done.key
            when = _time(key.revoked_at)
            if done.already_revoked:
                print(f"{key.shown} ({key.name!r}, id {key.id}) was revoked already, at {when}")
            else:
                print(
                    f"revoked {key.shown} ({key.name!r}, id {key.id}) at {when}; every service "
                    f"process refuses it within {CACHE_SECONDS:g} seconds"
                )
    return 0


async def _check_database(url: str) -> None:
    """Fail fast, with a reason, when the database is unreachable or not migrated."""
    try:
        async with await psycopg.AsyncConnection.connect(
            url, connect_timeout=CONNECT_SECONDS, autocommit=True
        ) as conn:
            cursor = await conn.execute("SELECT to_regclass('public.api_keys') IS NOT NULL")
            row = await cursor.fetchone()
    except psycopg.OperationalError as exc:
        reason = exc.args[0] if exc.args else type(exc).__name__
        raise Unavailable(f"cannot reach the database: {reason}") from exc
    except psycopg.Error as exc:  # its text may quote DATABASE_URL: name only the kind
        raise Unavailable(
            f"the database refused: {type(exc).__name__} (DATABASE_URL not shown)"
        ) from exc
    if row is None or not row[0]:
        raise Unavailable("the database has no API keys table: run `calendly-connect migrate`")


def _time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_table(keys: list[ApiKey]) -> str:
    if not keys:
        return "no API keys yet: `calendly-connect api-keys create --name NAME`"
    rows = [COLUMNS] + [
        (
            key.id,
            key.name,
            key.shown,
            key.scope.value,
            _time(key.created_at),
            _time(key.last_used_at),
            _time(key.revoked_at),
        )
        for key in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _as_json(keys: list[ApiKey]) -> str:
    listed: list[dict[str, Any]] = [
        {
            "id": key.id,
            "name": key.name,
            "prefix": key.shown,
            "scope": key.scope.value,
            "created_at": _time(key.created_at),
            "last_used_at": None if key.last_used_at is None else _time(key.last_used_at),
            "revoked_at": None if key.revoked_at is None else _time(key.revoked_at),
        }
        for key in keys
    ]
    return json.dumps({"api_keys": listed}, indent=2, ensure_ascii=False)
