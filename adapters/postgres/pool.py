"""The connection pool: every connection acts as the runtime role, opened explicitly."""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
import psycopg_pool
import structlog
from psycopg import sql
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format
from psycopg.rows import dict_row

Connection = psycopg.AsyncConnection[dict[str, Any]]
log = structlog.get_logger(__name__)

# ---------------------------------------------------------------- time bounds
# Postgres holds times from 4713 BC to 294276 AD and +/-infinity; Python's datetime holds
# years 1 to 9999. A stored time outside that (written before the decoders checked times, or
# by hand) must not make every later read of its row fail: it reads as the nearest bound.
EARLIEST: Final = datetime.min.replace(tzinfo=UTC)
LATEST: Final = datetime.max.replace(tzinfo=UTC)
# A year of five or more digits, as Postgres writes times after 9999 (ISO and JSON styles).
_LARGE_YEAR: Final = re.compile(r"\+?\d{5,}-")


def out_of_range(text: str) -> datetime | None:
    """The bound that a time Postgres wrote as `text` passes, or None if it passes neither.

    `-infinity` and BC times read as EARLIEST; `infinity` and years past 9999 as LATEST.
    """
    text = text.strip()
    if text == "-infinity" or text.endswith("BC"):
        return EARLIEST
    if text == "infinity" or _LARGE_YEAR.match(text):
        return LATEST
    return None


def within_range(moment: datetime) -> datetime:
    """`moment`, or the bound it passes when UTC cannot hold it (year 1 at +05:00, say)."""
    if moment.year not in (1, 9999) or moment.tzinfo is None:
        return moment
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return EARLIEST if moment.year == 1 else LATEST
    return moment


_TIMESTAMPTZ: Final = psycopg.postgres.types["timestamptz"].oid


class _ClampedTimestamptz(Loader):
    """psycopg's own timestamptz loader, with times outside datetime's range clamped.

    Exact for every time the session's zone writes inside years 1-9999. In a zone far from UTC,
    a time within hours of an edge is written as BC or as year 10000: it reads as that edge.
    """

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        # The default loader (the C one when psycopg's binary package is installed) does the
        # work; it raises DataError for values outside datetime's range.
        default = psycopg.postgres.adapters.get_loader(oid, self.format)
        if default is None:
            raise LookupError(f"psycopg has no loader for timestamptz ({self.format.name})")
        self._default = default(oid, context)

    def load(self, data: Buffer) -> datetime:
        try:
            moment: datetime = self._default.load(data)
        except psycopg.DataError:
            bound = self._bound(bytes(data))
            if bound is None:
                raise
            return bound
        return within_range(moment)

    @staticmethod
    def _bound(data: bytes) -> datetime | None:
        return out_of_range(data.decode("utf-8", "replace"))


class _ClampedTimestamptzBinary(_ClampedTimestamptz):
    format = Format.BINARY

    @staticmethod
    def _bound(data: bytes) -> datetime | None:
        # Microseconds since 2000-01-01; +/-infinity are the extremes of int64.
        return EARLIEST if int.from_bytes(data, "big", signed=True) < 0 else LATEST


def clamp_times(conn: psycopg.AsyncConnection[Any] | psycopg.Connection[Any]) -> None:
    """Read timestamptz values outside datetime's range as EARLIEST or LATEST on `conn`."""
    conn.adapters.register_loader(_TIMESTAMPTZ, _ClampedTimestamptz)
    conn.adapters.register_loader(_TIMESTAMPTZ, _ClampedTimestamptzBinary)


def _configure(role: str | None) -> Any:
    async def configure(conn: Connection) -> None:
        clamp_times(conn)
        if role:
            await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        # Whatever the server's or the role's default: every statement of a transaction sees
        # what committed before it began. The writes' lock order relies on it (DR-33): a
        # statement after a user's lock sees what that lock's last holder committed, as the
        # webhook path's check of a kept route does (DR-60).
        await conn.execute("SET default_transaction_isolation TO 'read committed'")
        await conn.commit()

    return configure


# A connection unused for longer than this is pinged before it is handed out.
IDLE_PING_SECONDS = 1.0
_returned_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


async def _mark_returned(conn: Connection) -> None:
    _returned_at[conn] = time.monotonic()


async def _check_if_idle(conn: Connection) -> None:
    """Raise if an idle connection no longer works: the pool then discards it."""
    if time.monotonic() - _returned_at.get(conn, 0.0) > IDLE_PING_SECONDS:
        await conn.execute("SELECT 1")


def make_pool(
    conninfo: str, *, runtime_role: str | None, min_size: int = 1, max_size: int = 10
) -> psycopg_pool.AsyncConnectionPool[Connection]:
    """A closed pool (no I/O here); `await pool.open(wait=True)` starts it."""
    return psycopg_pool.AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"row_factory": dict_row},
        configure=_configure(runtime_role),
        # Only a connection that sat idle is tested on checkout (a round trip per use would tax
        # the webhook path under load, where connections are never idle for long). One broken
        # by an outage while busy fails its transaction (503, the caller retries), is replaced
        # on return, and the unit of work then sweeps the idle ones (`sweep_broken_connections`).
        check=_check_if_idle,
        reset=_mark_returned,
        # How long a request waits for a connection before its 503: well inside Calendly's 15 s
        # read timeout, and a database outage is answered in seconds, not after 10.
        timeout=5.0,
        # The pool retries a failed connect with exponential back-off (1, 2, 4, 8 s ...) for as
        # long as this; requests waiting meanwhile cannot make it try sooner. psycopg_pool's
        # default (300 s) kept the service answering 503 for up to minutes after Postgres was
        # back. Here a run of attempts lasts 5 s (at 0, 1, 3, 5 s) and the next starts at once,
        # for as long as it takes: Postgres is noticed within about 2 s of coming back, at
        # start-up too.
        reconnect_timeout=5.0,
        reconnect_failed=_try_again,
        name="calendly-connect",
    )


async def open_pool(
    conninfo: str, *, runtime_role: str | None, min_size: int = 1, max_size: int = 10
) -> psycopg_pool.AsyncConnectionPool[Connection]:
    pool = make_pool(conninfo, runtime_role=runtime_role, min_size=min_size, max_size=max_size)
    await pool.open(wait=True, timeout=30.0)
    return pool


async def ping(pool: psycopg_pool.AsyncConnectionPool[Connection]) -> bool:
    """Whether the database answers a trivial query within the pool's timeout."""
    try:
        async with pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
    except (psycopg.Error, psycopg_pool.PoolTimeout):
        return False
    return True


_sweeps: weakref.WeakKeyDictionary[Any, asyncio.Task[None]] = weakref.WeakKeyDictionary()


def sweep_broken_connections(pool: psycopg_pool.AsyncConnectionPool[Connection]) -> None:
    """Test the pool's idle connections in the background; broken ones are replaced.

    Called when a connection turned out broken (Postgres restarted, a backend was killed): its
    idle siblings are most likely broken too, and without a sweep each would fail one more
    request, even after Postgres is back. One sweep at a time per pool; never waited for.
    """
    running = _sweeps.get(pool)
    if running is not None and not running.done():
        return
    _sweeps[pool] = asyncio.get_running_loop().create_task(_sweep(pool), name="postgres-pool-sweep")


def _try_again(pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
    """psycopg_pool gave up a run of reconnection attempts: check what is left, start anew."""
    sweep_broken_connections(pool)  # pool.check() also starts a new connection attempt


async def _sweep(pool: psycopg_pool.AsyncConnectionPool[Connection]) -> None:
    if pool.closed:
        return
    try:
        await pool.check()
    except Exception as exc:  # best effort: the next failure sweeps again
        log.warning("postgres.pool_sweep_failed", error=type(exc).__name__)
