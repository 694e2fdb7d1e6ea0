"""`calendly-connect repair-connections`: give rows without a Calendly user URI theirs back."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping, Sequence
from typing import Final

from entrypoints.arguments import fail
from entrypoints.container import Container, resolve
from entrypoints.logging import configure_service_logging
from entrypoints.settings import ConfigError, Settings, load_settings

# Outcomes that leave a row without its URI for a reason a person must look at.
UNREPAIRED: Final = ("conflict", "failed")
BAR_WIDTH: Final = 30


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    parser = argparse.ArgumentParser(
        prog="calendly-connect repair-connections",
        description="Fill in missing Calendly user URIs (refresh the token, read /users/me), "
        "then ensure the subscription. Safe to run twice and while the service runs.",
    )
    parser.add_argument("--dry-run", action="store_true", help="say what would be done")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        return fail(str(exc))
    configure_service_logging(settings, level="WARNING")
    return asyncio.run(repair(settings, dry_run=args.dry_run))


async def repair(settings: Settings, *, dry_run: bool) -> int:
    """Repair every candidate row, one line each; 1 when one needs a person."""
    container = Container(settings=settings)
    try:
        repair_connection = await resolve(container.repair_connection())
        users = await repair_connection.candidates()
        counts: dict[str, int] = {}
        show_bar = sys.stderr.isatty() and len(users) > 5
        for n, user_id in enumerate(users, 1):
            result = await repair_connection(user_id, dry_run=dry_run)
            counts[result.action] = counts.get(result.action, 0) + 1
            line = f"{result.user_id}: {result.action}" + (
                f" ({result.detail})" if result.detail else ""
            )
            if not show_bar:
                print(line)
                continue
            if result.action in UNREPAIRED:
                # Above the bar, so what needs a person is not lost in the progress display.
                sys.stderr.write("\r\033[K")
                print(line, flush=True)
            done = int(BAR_WIDTH * n / len(users))
            sys.stderr.write(f"\r[{'#' * done}{'.' * (BAR_WIDTH - done)}] {n}/{len(users)}")
            sys.stderr.flush()
        if show_bar:
            sys.stderr.write("\n")
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing to repair"
        print(f"{len(users)} connection(s) without a Calendly user URI: {summary}")
        return 1 if any(counts.get(action) for action in UNREPAIRED) else 0
    finally:
        await resolve(container.shutdown_resources())
