"""`calendly-connect rotate-keys`: re-seal every stored secret under the active (first)
TOKEN_ENCRYPTION_KEY, so an older key can be removed (DR-38).

The rotation, end to end:
1. put the new key first in TOKEN_ENCRYPTION_KEY, keep the old ones after it, restart the
   service and the worker (they seal with the new key from then on, and open both);
2. `calendly-connect rotate-keys` (safe while they run; resumable; a second run does nothing);
3. `calendly-connect rotate-keys --check` says no secret is under the old key any more: remove it
   from TOKEN_ENCRYPTION_KEY and restart.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final, TextIO

import psycopg

from adapters.crypto import AesGcmTokenCipher
from adapters.postgres.key_rotation import Batch, PostgresKeyRotation, total
from domain.errors import StorageUnavailable
from entrypoints.arguments import fail
from entrypoints.operator.runtime_db import database_settings, runtime_pool
from entrypoints.settings import (
    ConfigError,
    DatabaseSettings,
    EncryptionSettings,
    load_encryption_settings,
)

DEFAULT_BATCH: Final = 50
# Passes over what is left (a row the service held is tried again on the next one).
MAX_PASSES: Final = 5


def batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"{value} is outside 1 to 10000")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calendly-connect rotate-keys",
        description="Re-seal every stored token, signing key and pending connect under the "
        "first key of TOKEN_ENCRYPTION_KEY, so the others can be removed. Safe while the "
        "service runs; a second run does nothing.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing: count the secrets under each key; exit 1 while any is under "
        "another key than the first",
    )
    parser.add_argument(
        "--batch",
        type=batch_size,
        default=DEFAULT_BATCH,
        help=f"rows per transaction (default {DEFAULT_BATCH})",
    )
    return parser


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    args = _parser().parse_args(argv)
    database = database_settings(environ)
    try:
        encryption = load_encryption_settings(environ)
    except ConfigError as exc:
        for problem in exc.problems:
            fail(problem)
        return 2
    if database is None:
        return 2
    try:
        return asyncio.run(_run(args, database, encryption))
    except StorageUnavailable as exc:
        return fail(str(exc), 1)
    except psycopg.Error as exc:  # its text may quote DATABASE_URL: name only the kind
        return fail(
            f"the database refused: {type(exc).__name__}; the batches done so far stay done; "
            "run it again",
            1,
        )


async def _run(
    args: argparse.Namespace, database: DatabaseSettings, encryption: EncryptionSettings
) -> int:
    cipher = AesGcmTokenCipher(encryption.keys, encryption.active_key)
    active = encryption.active_key
    async with runtime_pool(database) as pool:
        rotation = PostgresKeyRotation(pool, cipher, active)
        if args.check:
            return _report(await rotation.count_by_key(), active, encryption)
        before = await rotation.count_by_key()
        todo = sum(n for key_id, n in before.items() if key_id != active)
        progress = Progress(todo, sys.stderr)
        resealed = 0
        for attempt in range(MAX_PASSES):
            this_pass = await _pass(rotation.connections_batch, args.batch, progress)
            this_pass += await _pass(rotation.states_batch, args.batch, progress)
            resealed += total(this_pass).resealed
            if not total(this_pass).busy:
                break
            await asyncio.sleep(attempt + 1)  # a row the service holds: let it finish
        progress.close()
        after = await rotation.count_by_key()
    print(f"{resealed} secret(s) re-sealed under key {active!r}")
    unreadable = {k: n for k, n in after.items() if k != active and k not in encryption.keys}
    left = {k: n for k, n in after.items() if k != active and k in encryption.keys}
    if unreadable:
        return fail(
            f"{sum(unreadable.values())} secret(s) no configured key opens ({_counts(unreadable)}"
            "): add that key to TOKEN_ENCRYPTION_KEY after the first one and run again, or have "
            "those users reconnect",
            1,
        )
    if left:
        return fail(
            f"still under other keys: {_counts(left)}: in use by the service through every "
            "pass, or written meanwhile by a process still sealing with an old key; restart "
            "every process with the new key first, then run again",
            1,
        )
    retired = sorted(set(encryption.keys) - {active})
    if retired:
        print(
            f"nothing is sealed under {', '.join(map(repr, retired))} any more: remove it from "
            "TOKEN_ENCRYPTION_KEY and restart"
        )
    return 0


async def _pass(
    batch: Callable[[str | None, int], Awaitable[Batch]], size: int, progress: Progress
) -> list[Batch]:
    """Batches in key order until one comes back empty."""
    done: list[Batch] = []
    after: str | None = None
    while True:
        result = await batch(after, size)
        if not result.rows:
            return done
        done.append(result)
        progress.advance(result.resealed + result.unreadable)
        after = result.last


def _report(counts: Mapping[str, int], active: str, encryption: EncryptionSettings) -> int:
    if not counts:
        print(f"no sealed secret is stored yet; new ones are sealed under {active!r}")
        return 0
    for key_id, n in counts.items():
        state = (
            "active"
            if key_id == active
            else "configured"
            if key_id in encryption.keys
            else "NOT CONFIGURED"
        )
        print(f"{key_id}: {n} secret(s) ({state})")
    old = {key_id: n for key_id, n in counts.items() if key_id != active}
    if old:
        return fail(
            f"{_counts(old)} still under another key than {active!r}: run "
            "`calendly-connect rotate-keys`",
            1,
        )
    return 0


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} under {key_id!r}" for key_id, n in counts.items()) or "none"


class Progress:
    """Secrets done out of those found: a bar redrawn in place on a terminal, a line every few
    seconds elsewhere (logs stay short)."""

    def __init__(self, todo: int, out: TextIO) -> None:
        self._todo, self._out = todo, out
        self._done = 0
        self._tty = out.isatty()
        self._said = 0.0

    def advance(self, n: int) -> None:
        self._done += n
        now = time.monotonic()
        if self._tty:
            width = 30
            filled = width * min(self._done, self._todo) // max(self._todo, 1)
            self._out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self._line()}")
            self._out.flush()
        elif now - self._said >= 5:
            self._said = now
            self._out.write(self._line() + "\n")

    def _line(self) -> str:
        share = 100 * min(self._done, self._todo) // max(self._todo, 1)
        return f"{self._done}/{self._todo} secrets re-sealed ({share} %)"

    def close(self) -> None:
        if self._tty and self._done:
            self._out.write("\n")
        elif self._done:
            self._out.write(self._line() + "\n")
