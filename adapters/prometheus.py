"""The service's Prometheus metrics, and `/metrics`'s text summed over every process (DR-39).

The metrics are module-level objects, as prometheus_client has them: the Calendly adapter and
the HTTP entrypoint count into them directly (a counter `inc` and a histogram `observe` on the
webhook path, nothing else). Where the process environment has PROMETHEUS_MULTIPROC_DIR when
Python starts, prometheus_client writes every value to a file per process there, and
`MetricsExporter` sums the files of all the processes that share the directory: every service
process answers a scrape with the deployment's totals. What lives in the database (connections
by status, the host webhooks' backlog, the worker's lag) is read at scrape time, at most once
every few seconds per process, and never on a request.

No label holds a secret or a user id: outcomes, Calendly route templates (never a URI or id),
statuses and host webhook endpoint names (the operator's own) only.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

PREFIX: Final = "calendly_connect"
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
# What the database is asked at scrape time is reused for this long (each process its own).
DATABASE_READINGS_SECONDS: Final = 5.0

# ------------------------------------------------------------------ webhook deliveries
# The outcomes HandleWebhookEvent answers (applied, ignored, duplicate, stored_aside) and the
# refusals the route and the error table make before or instead of one.
WEBHOOK_OUTCOMES: Final = (
    "applied",
    "ignored",
    "duplicate",
    "stored_aside",
    "rejected_signature",
    "too_large",
    "unsupported_media_type",
    "storage_unavailable",
    "error",
)
WEBHOOK_DELIVERIES: Final = Counter(
    f"{PREFIX}_webhook_deliveries",
    "Calendly webhook deliveries received, by what came of them.",
    ["outcome"],
)
_WEBHOOK_OUTCOME_COUNTERS: Final = {o: WEBHOOK_DELIVERIES.labels(o) for o in WEBHOOK_OUTCOMES}
WEBHOOK_INGEST_SECONDS: Final = Histogram(
    f"{PREFIX}_webhook_ingest_seconds",
    "Time from a delivery's arrival to its answer (reading the body, verifying, committing).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def webhook_answered(outcome: str, seconds: float) -> None:
    """One delivery: its outcome counted, its latency observed. Nothing else, no I/O."""
    counter = _WEBHOOK_OUTCOME_COUNTERS.get(outcome) or _WEBHOOK_OUTCOME_COUNTERS["error"]
    counter.inc()
    WEBHOOK_INGEST_SECONDS.observe(seconds)


# ------------------------------------------------------------------ live updates
LIVE_STREAMS: Final = Gauge(
    f"{PREFIX}_live_streams",
    "Live-update (SSE) streams open, over every service process.",
    # Summed over the processes alive; a stopped process's streams drop out (mark_process_dead).
    multiprocess_mode="livesum",
)

# ------------------------------------------------------------------ Calendly
CALENDLY_CALLS: Final = Counter(
    f"{PREFIX}_calendly_calls",
    "HTTP requests sent to Calendly (each attempt), by route template and answer status "
    "(`error`: no answer).",
    ["method", "route", "status"],
)
CALENDLY_RATE_LIMIT_WAITS: Final = Counter(
    f"{PREFIX}_calendly_rate_limit_waits",
    "Waits for Calendly's rate limit: `budget` (the token's window was spent, waited before "
    "calling), `retry_after` (a 429 waited out before retrying), `refused` (the reset was too "
    "far off: RateLimited without calling).",
    ["reason"],
)
CALENDLY_RATE_LIMIT_WAIT_SECONDS: Final = Counter(
    f"{PREFIX}_calendly_rate_limit_wait_seconds",
    "Seconds spent waiting for Calendly's rate limit.",
)
TOKEN_REFRESHES: Final = Counter(
    f"{PREFIX}_token_refreshes",
    "Access-token refreshes asked of Calendly: `ok`, `rejected` (the grant is no longer valid: "
    "the user must reconnect) or `failed` (any other error; tried again later).",
    ["outcome"],
)

# Calendly's paths as templates: an id or URI segment never becomes a label value.
_ROUTES: Final = (
    (re.compile(r"/oauth/token"), "/oauth/token"),
    (re.compile(r"/oauth/revoke"), "/oauth/revoke"),
    (re.compile(r"/oauth/introspect"), "/oauth/introspect"),
    (re.compile(r"/users/me"), "/users/me"),
    (re.compile(r"/users/[^/]+"), "/users/{uuid}"),
    (re.compile(r"/webhook_subscriptions"), "/webhook_subscriptions"),
    (re.compile(r"/webhook_subscriptions/[^/]+"), "/webhook_subscriptions/{uuid}"),
    (re.compile(r"/scheduled_events"), "/scheduled_events"),
    (re.compile(r"/scheduled_events/[^/]+"), "/scheduled_events/{uuid}"),
    (re.compile(r"/scheduled_events/[^/]+/invitees"), "/scheduled_events/{uuid}/invitees"),
)


def calendly_route(path: str) -> str:
    """The template of one of Calendly's paths; `other` for anything not listed."""
    path = path.split("?", 1)[0].rstrip("/") or "/"
    for pattern, template in _ROUTES:
        if pattern.fullmatch(path):
            return template
    return "other"


def calendly_called(method: str, path: str, status: int | None) -> None:
    CALENDLY_CALLS.labels(method, calendly_route(path), str(status) if status else "error").inc()


def rate_limit_waited(reason: str, seconds: float) -> None:
    CALENDLY_RATE_LIMIT_WAITS.labels(reason).inc()
    if seconds > 0:
        CALENDLY_RATE_LIMIT_WAIT_SECONDS.inc(seconds)


def token_refreshed(outcome: str) -> None:
    TOKEN_REFRESHES.labels(outcome).inc()


# ------------------------------------------------------------------ processes
def multiprocess_mode() -> bool:
    """Whether this process writes its values to PROMETHEUS_MULTIPROC_DIR (decided by
    prometheus_client when it was first imported, from the process environment)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


_FILE_PID: Final = re.compile(r"_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def forget_dead_processes(directory: Path) -> list[int]:
    """Drop the live gauges of processes that are gone without saying so (SIGKILL, a crash).

    Their counters and histograms stay: a total that went down would look like a reset to
    Prometheus. Returns the pids forgotten.
    """
    pids: set[int] = set()
    for path in directory.glob("gauge_live*_*.db"):
        match = _FILE_PID.search(path.name)
        if match is not None:
            pids.add(int(match.group(1)))
    dead = sorted(pid for pid in pids if pid != os.getpid() and not _alive(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    return dead


def process_started(directory: Path | None) -> None:
    """At a service process's start: its gauges from nothing (a pid may be reused in a
    directory an earlier run left), and the live gauges of processes gone meanwhile."""
    LIVE_STREAMS.set(0)
    if directory is not None:
        forget_dead_processes(directory)


def process_stopping(directory: Path | None) -> None:
    """At a service process's end: its live gauges leave the sums."""
    if directory is not None:
        multiprocess.mark_process_dead(os.getpid(), str(directory))  # type: ignore[no-untyped-call]


# ------------------------------------------------------------------ the database's gauges
@dataclass(frozen=True)
class DatabaseReadings:
    """What the scrape reports from the database: counts and ages, never a user."""

    connections: Mapping[str, int] = field(default_factory=dict)
    # Changes known but not yet delivered, per host webhook endpoint (its name).
    host_webhook_backlog: Mapping[str, int] = field(default_factory=dict)
    # How long the oldest maintenance that is due (no lease, no back-off) has waited.
    worker_lag_seconds: float = 0.0


ReadDatabase = Callable[[], Awaitable[DatabaseReadings]]


class _DatabaseGauges(Collector):
    def __init__(self) -> None:
        self.readings: DatabaseReadings | None = None
        self.read_ok = False
        self.read_at = 0.0

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"{PREFIX}_database_readings_up",
            "1 when this scrape's database readings are fresh, 0 when the database did not answer "
            "(the gauges below are then left out).",
        )
        up.add_metric([], 1.0 if self.read_ok else 0.0)
        yield up
        readings = self.readings
        if not self.read_ok or readings is None:
            return
        connections = GaugeMetricFamily(
            f"{PREFIX}_connections", "Calendly connections by status.", labels=["status"]
        )
        for status, count in sorted(readings.connections.items()):
            connections.add_metric([status], float(count))
        yield connections
        backlog = GaugeMetricFamily(
            f"{PREFIX}_host_webhook_backlog",
            "Changes known but not yet delivered to the host's webhook endpoint.",
            labels=["endpoint"],
        )
        for endpoint, count in sorted(readings.host_webhook_backlog.items()):
            backlog.add_metric([endpoint], float(count))
        yield backlog
        lag = GaugeMetricFamily(
            f"{PREFIX}_worker_lag_seconds",
            "How long the oldest due maintenance (not leased, not backing off) has waited.",
        )
        lag.add_metric([], readings.worker_lag_seconds)
        yield lag


class _ThisProcess(Collector):
    """Without a multiprocess directory: this process's own metrics (in-process tests)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class MetricsExporter:
    """The `/metrics` text: the processes' metrics (summed over `directory` when there is one)
    and the database's readings, refreshed at most every `cache_seconds`."""

    def __init__(
        self,
        read_database: ReadDatabase,
        directory: Path | None,
        *,
        cache_seconds: float = DATABASE_READINGS_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read_database
        self._directory = directory
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._lock = asyncio.Lock()
        self._database = _DatabaseGauges()
        self._fresh_until: float | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        if directory is not None:
            multiprocess.MultiProcessCollector(self.registry, path=str(directory))  # type: ignore[no-untyped-call]
        else:
            self.registry.register(_ThisProcess())
        self.registry.register(self._database)

    async def render(self) -> bytes:
        await self._refresh()
        return generate_latest(self.registry)

    async def _refresh(self) -> None:
        async with self._lock:  # concurrent scrapes share one read
            now = self._monotonic()
            if self._fresh_until is not None and now < self._fresh_until:
                return
            try:
                self._database.readings = await self._read()
                self._database.read_ok = True
            except Exception as exc:  # the scrape still answers, saying so
                log.warning("metrics.database_readings_failed", error=type(exc).__name__)
                self._database.read_ok = False
            self._fresh_until = now + self._cache_seconds
            if self._directory is not None:
                forget_dead_processes(self._directory)


__all__ = [
    "CONTENT_TYPE",
    "LIVE_STREAMS",
    "WEBHOOK_OUTCOMES",
    "DatabaseReadings",
    "MetricsExporter",
    "calendly_called",
    "calendly_route",
    "forget_dead_processes",
    "multiprocess_mode",
    "process_started",
    "process_stopping",
    "rate_limit_waited",
    "token_refreshed",
    "webhook_answered",
]
