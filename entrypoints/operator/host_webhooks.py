"""`calendly-connect host-webhooks status | replay | retry | enable | remove` (DR-34).

Needs only the database's settings (DATABASE_URL, DATABASE_RUNTIME_ROLE). `run`, the
dispatcher itself, is the runtime's (entrypoints/service/host_webhooks.py); the command line
sends it there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import msgspec

from adapters.postgres.host_webhooks import EndpointStatus, PostgresHostWebhooks
from domain.errors import StorageUnavailable
from entrypoints.arguments import fail
from entrypoints.operator.runtime_db import database_settings, runtime_pool
from entrypoints.settings import DatabaseSettings


def _moment(text: str) -> datetime:
    """An argparse type: an RFC 3339 time with its offset (2026-12-01T09:00:00Z)."""
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 time, e.g. 2026-12-01T09:00:00Z"
        ) from exc
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no offset; add Z or +01:00")
    return when


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calendly-connect host-webhooks",
        description="Host webhooks (HOST_WEBHOOK_URL): run the dispatcher, see and steer it.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("run", help="deliver host webhooks (its own process; many may run)")
    status = actions.add_parser(
        "status", help="per endpoint: state, backlog, oldest undelivered, failures, last error"
    )
    status.add_argument("--json", action="store_true", help="one JSON document")
    replay = actions.add_parser(
        "replay", help="send again every change from a time on (to an endpoint, of a user)"
    )
    replay.add_argument("--since", required=True, type=_moment, help="RFC 3339, with offset")
    replay.add_argument("--endpoint", help="only this endpoint (default: every one)")
    replay.add_argument("--user", help="only this user's changes")
    retry = actions.add_parser(
        "retry", help="try failing and parked streams now, and lift a Retry-After throttle"
    )
    retry.add_argument("--endpoint", help="only this endpoint (default: every one)")
    enable = actions.add_parser("enable", help="enable an endpoint that was disabled (410)")
    enable.add_argument("name", help="the endpoint's name (`default` for an unnamed URL)")
    remove = actions.add_parser(
        "remove",
        help="forget an endpoint no longer configured, and its streams (it holds the change "
        "log's pruning back)",
    )
    remove.add_argument("name", help="the endpoint's name")
    return parser


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    args = parser().parse_args(argv)
    database = database_settings(environ)
    if database is None:
        return 2
    try:
        return asyncio.run(_run(args, database))
    except StorageUnavailable as exc:
        return fail(str(exc), 1)


async def _run(args: argparse.Namespace, database: DatabaseSettings) -> int:
    async with runtime_pool(database) as pool:
        store = PostgresHostWebhooks(pool)
        if args.action == "status":
            found = await store.status()
            print(_as_json(found) if args.json else _as_table(found))
        elif args.action == "replay":
            moved = await store.replay(args.since, endpoint=args.endpoint, user_id=args.user)
            print(f"{moved} stream(s) will send again every change since {args.since.isoformat()}")
        elif args.action == "retry":
            due = await store.retry(args.endpoint)
            print(f"{due} stream(s) are due now")
        elif args.action == "remove":
            if not await store.remove(args.name):
                return fail(
                    f"no endpoint named {args.name!r}; `calendly-connect host-webhooks status` "
                    "lists them",
                    1,
                )
            print(
                f"endpoint {args.name!r} is forgotten with its streams; a dispatcher still "
                "configured with it adds it back, from the end of the feed"
            )
        elif not await store.enable(args.name):
            return fail(
                f"no endpoint named {args.name!r}; `calendly-connect host-webhooks status` "
                "lists them",
                1,
            )
        else:
            print(f"endpoint {args.name!r} is enabled; what it missed is delivered next")
    return 0


_WORDS: Final = re.compile(r"[a-z]+(?:[-_.][a-z]+)*")


def shown_url(url: str) -> str:
    """The endpoint's URL as printed: whatever may be a credential masked (the user and password
    before `@`, the query's values, and path segments that look like tokens: 16 characters or
    more, not plain lowercase words, as in Slack's or Zapier's hook URLs), the rest kept so the
    operator knows which endpoint it is."""
    parts = urlsplit(url)
    path = "/".join(
        "***" if len(segment) >= 16 and not _WORDS.fullmatch(segment) else segment
        for segment in parts.path.split("/")
    )
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    # A parameter's name stays (`token=***`); a bare value (`?s3cr3t`) goes whole.
    query = "&".join(
        f"{part.partition('=')[0]}=***" if "=" in part else "***"
        for part in parts.query.split("&")
        if part
    )
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def _as_json(found: Sequence[EndpointStatus]) -> str:
    rows: list[dict[str, Any]] = []
    for status in found:
        row = msgspec.to_builtins(status)
        row["url"] = shown_url(status.url)
        row["state"] = status.state
        rows.append(row)
    return json.dumps({"endpoints": rows}, indent=2)


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _as_table(found: Sequence[EndpointStatus]) -> str:
    if not found:
        return "no host webhook endpoint yet (set HOST_WEBHOOK_URL and run the dispatcher)"
    lines = []
    for s in found:
        lines.append(
            f"{s.name}: {s.state}  {shown_url(s.url)}\n"
            f"  backlog {s.backlog + s.fan_lag} (streams {s.backlog}, not fanned out "
            f"{s.fan_lag}), oldest undelivered {_time(s.oldest_undelivered)}\n"
            f"  failing streams {s.failing}, parked {s.parked}, last success "
            f"{_time(s.last_success_at)}, events {', '.join(s.event_types) or 'all'}"
        )
        error = s.disabled_reason or s.last_error or s.streams_error
        if error:
            lines.append(f"  last error: {error}")
    return "\n".join(lines)
