"""Benchmark 7, part two: a day of Calendly time for the worker (issue 15).

Two stacks (embedded Postgres, the sandbox, one service process for the connects and the
webhooks): one with today's defaults and the full mix, one with the defaults before
migration 0014 and idle connections only, the reference of the same run. Every connection is
made through the real popup flow at the sandbox; then, so that one day shows the steady state,
each kind of work is made due at a random moment of its interval (as if the connections had
been running for weeks), the sandbox's call log is cleared, and the day begins.

The day runs on one virtual clock, shared by the worker (its container's clock) and the sandbox
(`/_sandbox/clock/advance`), in steps of 30 s. At each step: the events of the script, a beat
of the webhook endpoint's health (none during the outage), the watched users' marks while they
watch, the outage sweep, and worker passes until nothing is due. Time stands still while the
worker works, so the day's detection times are the schedule's; how long the worker took in real
time to drain the outage's sweep is reported beside them.

The mix (today's stack): idle paid-plan connections; active ones (each books once, delivered
by webhook); free-plan ones watched for two hours, and unwatched. The script: grants revoked at
the start while nobody looks, and others revoked with the page opened an hour later; an outage
of our webhook endpoint from 12:00 to 14:00, during which subscriptions are disabled (as a day
of failed deliveries would: forced at the sandbox, as the day is shorter than Calendly's
retries) and their users book (the gap); a booking by a watched free-plan user.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from dependency_injector import providers

from adapters.postgres.watching import PostgresWatchedPolling
from benchmarks.stack import Stack, stack
from entrypoints.container import Container, resolve
from entrypoints.service.worker import Worker, build_worker
from entrypoints.settings import load_settings

FOLLOW_UP_SECONDS = 900  # the promise: repaired and backfilled within 15 minutes
PAID_LIMIT_PER_MINUTE = 500  # API_FACTS: per Calendly user, paid plans
FREE_LIMIT_PER_MINUTE = 50
TOKEN_LIMIT_PER_MINUTE = 8
OLD_DEFAULTS = {  # before migration 0014: see DR-45
    "SUBSCRIPTION_CHECK_SECONDS": "1800",
    "SYNC_INTERVAL_SECONDS": "21600",
    "PLAN_RECHECK_SECONDS": "600",
    # The proactive refresh, 5 minutes before each 2-hour token ran out: a grant check every
    # 115 minutes refreshes then (a pass that called Calendly meanwhile refreshed already).
    "GRANT_CHECK_SECONDS": "6900",
}


@dataclass
class DayConfig:
    idle_paid: int = 8_400
    active_paid: int = 1_000
    free_watched: int = 100
    free_unwatched: int = 500
    revoked_unwatched: int = 20  # taken from the idle paid ones
    revoked_opened: int = 20
    disabled_in_outage: int = 50
    old_idle_paid: int = 1_000
    old_free_unwatched: int = 100
    step_seconds: int = 30
    hours: float = 24.0
    outage: tuple[float, float] = (12.0, 14.0)
    watched: tuple[float, float] = (8.0, 10.0)
    concurrency: int = 16  # connects at once
    seed: int = 15


class VirtualClock:
    """The day's clock: the worker's `Clock`, moved on in step with the sandbox's."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


@dataclass
class Mix:
    groups: dict[str, list[str]] = field(default_factory=dict)  # class -> our user ids

    def of(self) -> dict[str, str]:
        return {user: group for group, users in self.groups.items() for user in users}


# ------------------------------------------------------------------------------- the stacks
async def connect_mix(s: Stack, mix: Mix, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(user: str, plan: str) -> None:
            async with gate:
                await s.connect(http, user, plan)

        await asyncio.gather(
            *(
                one(user, "free" if group.startswith("free") else "standard")
                for group, users in mix.groups.items()
                for user in users
            )
        )


def steady_state(s: Stack, start: datetime, worker: Any) -> None:
    """Each kind of work due at a random moment of its interval (`worker`: the stack's
    WorkerSettings) from `start`, as after weeks of running; the last sync as long before the
    next one as the interval says."""
    s.sql(  # what a first pass would have found: whose webhooks work
        "UPDATE connection_maintenance m SET webhooks = (c.webhook_status = 'active')"
        " FROM calendar_connections c WHERE c.id = m.connection_id"
    )
    # Their tokens ran out during a quiet stretch (most idle connections' have): the day's
    # first call for each needs its refresh, as it would. (Somewhat more than the true steady
    # state, where a connection called within the last two hours still has a live token.)
    s.sql(
        "UPDATE calendar_connections SET token_expires_at = %(start)s - interval '1 minute'",
        {"start": start},
    )
    every = {
        "grant": timedelta(seconds=worker.grant_check_seconds),
        "subscription": timedelta(seconds=worker.subscription_check_seconds),
        "plan": timedelta(seconds=worker.plan_recheck_seconds),
        "sync": timedelta(seconds=worker.sync_interval_seconds),
        "poll": timedelta(seconds=worker.plan_poll_seconds),
    }
    s.sql(
        """
        UPDATE connection_maintenance m SET
            grant_due = %(start)s + random() * %(grant)s,
            subscription_due = %(start)s + random() * CASE WHEN m.webhooks
                THEN %(subscription)s ELSE %(plan)s END,
            sync_due = %(start)s + random() * CASE WHEN m.webhooks
                THEN %(sync)s ELSE %(poll)s END,
            retry_at = NULL, failures = 0, last_run_at = %(start)s - interval '1 hour'
        """,
        {"start": start, **every},
    )
    s.sql(
        """
        UPDATE connection_maintenance SET synced_at = sync_due - CASE WHEN webhooks
            THEN %(sync)s ELSE %(poll)s END
        """,
        every,
    )


# ----------------------------------------------------------------------------- the day
@dataclass
class Script:
    """What happens when in the day, and when each promise was seen kept."""

    revoked_unwatched: list[str]
    revoked_opened: list[str]
    disabled: list[str]
    watched: list[str]
    active: list[str]
    watched_booker: str
    sandbox_ids: dict[str, str]  # our user id -> sandbox user id
    found: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    booked_at: dict[str, float] = field(default_factory=dict)
    gap_events: dict[str, str] = field(default_factory=dict)  # user -> event uri
    # Real seconds the steps of the outage's follow-up (15 minutes from its end) took: the
    # worker's time for the calls the sweep asked for.
    follow_up_real_seconds: float = 0.0


async def _control(
    http: aiohttp.ClientSession, s: Stack, method: str, path: str, body: Any = None
) -> Any:
    async with http.request(method, f"{s.sandbox_url}{path}", json=body) as response:
        assert response.status < 300, (path, response.status, await response.text())
        return await response.json() if response.status != 204 else None


async def _book(http: aiohttp.ClientSession, s: Stack, sandbox_id: str, at: datetime) -> str:
    start = (at + timedelta(days=2)).strftime("%Y-%m-%dT%H:00:00.000000Z")
    body = {
        "start_time": start,
        "invitees": [{"email": "guest@guest.example", "name": "Guest"}],
    }
    booked = await _control(http, s, "POST", f"/_sandbox/users/{sandbox_id}/bookings", body)
    return str(booked["event"]["uri"])


async def run_day(
    s: Stack, cfg: DayConfig, mix: Mix, script: Script | None, overrides: dict[str, str]
) -> dict[str, Any]:
    """The day on stack `s`; the sandbox's call log of it."""
    settings = load_settings({**s.env, **overrides})
    container = Container(settings=settings)
    start = datetime.now(tz=UTC)
    clock = VirtualClock(start)
    container.clock.override(providers.Object(clock))
    steady_state(s, start, settings.worker)
    worker: Worker = await build_worker(container, settings, clock=clock)
    pool = await resolve(container.pool())
    watched = PostgresWatchedPolling(pool, timedelta(seconds=settings.worker.watched_poll_seconds))
    health = await resolve(container.webhook_health())
    steps = int(cfg.hours * 3600 / cfg.step_seconds)
    outage = (cfg.outage[0] * 3600, cfg.outage[1] * 3600)
    watching = (cfg.watched[0] * 3600, cfg.watched[1] * 3600)
    started_real = time.monotonic()
    passes = 0
    async with aiohttp.ClientSession() as http:
        await _control(http, s, "DELETE", "/_sandbox/calls")
        offset = 0.0
        try:
            await health.beat(now=clock.now())
            for step in range(1, steps + 1):
                clock.advance(cfg.step_seconds)
                # The sandbox's clock is the real one plus an offset: moved to the day's time
                # (the real seconds the step took are already on it).
                behind = (clock.now() - datetime.now(tz=UTC)).total_seconds() - offset
                if behind > 0:
                    moved = await _control(
                        http, s, "POST", "/_sandbox/clock/advance", {"seconds": behind}
                    )
                    offset = float(moved["offset"])
                t = step * cfg.step_seconds
                if script is not None:
                    await _events(http, s, script, cfg, t, watched, clock)
                in_outage = outage[0] <= t < outage[1]
                if not in_outage:
                    await health.beat(now=clock.now())
                if script is not None and watching[0] <= t < watching[1]:
                    await watched.mark(script.watched)
                step_started = time.monotonic()
                await worker.sweep_outages()
                while handled := await worker.run_once():
                    passes += handled
                if script is not None and outage[1] <= t < outage[1] + FOLLOW_UP_SECONDS:
                    script.follow_up_real_seconds += time.monotonic() - step_started
                if script is not None:
                    await _observe(http, s, script, t, outage[1])
        finally:
            await resolve(container.shutdown_resources())
        calls = (await _control(http, s, "GET", "/_sandbox/calls"))["calls"]
    return {
        "calls": calls,
        "start": start,
        "passes": passes,
        "real_seconds": round(time.monotonic() - started_real, 1),
    }


async def _events(
    http: aiohttp.ClientSession,
    s: Stack,
    script: Script,
    cfg: DayConfig,
    t: int,
    watched: PostgresWatchedPolling,
    clock: VirtualClock,
) -> None:
    step = cfg.step_seconds
    if t == step:  # the app removed in Calendly, nobody looks
        for user in script.revoked_unwatched + script.revoked_opened:
            await _control(
                http, s, "POST", f"/_sandbox/users/{script.sandbox_ids[user]}/revoke_app"
            )
            script.booked_at[f"revoked:{user}"] = t
    if t == 3600:  # the page opened an hour later, for some of them
        await watched.check_opened(script.revoked_opened)
        for user in script.revoked_opened:
            script.booked_at[f"opened:{user}"] = t
    if t == int(cfg.outage[0] * 3600) + 600:  # during the outage: disabled, then booked
        subs = (await _control(http, s, "GET", "/_sandbox/subscriptions"))["subscriptions"]
        by_user = {str(sub["user"]).rsplit("/", 1)[-1]: sub for sub in subs}
        for user in script.disabled:
            sub = by_user[script.sandbox_ids[user]]
            uuid = str(sub["uri"]).rsplit("/", 1)[-1]
            await _control(http, s, "POST", f"/_sandbox/subscriptions/{uuid}/disable")
            script.gap_events[user] = await _book(http, s, script.sandbox_ids[user], clock.now())
    if t == int(cfg.watched[0] * 3600) + 1800:  # a watched free-plan user books
        user = script.watched_booker
        script.gap_events[f"watched:{user}"] = await _book(
            http, s, script.sandbox_ids[user], clock.now()
        )
        script.booked_at[f"watched:{user}"] = t
    active_every = int(cfg.hours * 3600 / max(len(script.active), 1))
    if active_every and t % active_every < step:  # the active ones book through the day
        index = t // active_every
        if index < len(script.active):
            user = script.active[index]
            await _book(http, s, script.sandbox_ids[user], clock.now())


async def _observe(
    http: aiohttp.ClientSession, s: Stack, script: Script, t: int, outage_end: float
) -> None:
    """Note when each promise was first seen kept (seconds of the day)."""
    pending = [u for u in script.revoked_unwatched if u not in script.found["revoked_unwatched"]]
    pending_opened = [u for u in script.revoked_opened if u not in script.found["revoked_opened"]]
    if pending or pending_opened:
        rows = s.sql(
            "SELECT user_id FROM calendar_connections WHERE status = 'needs_reauth'"
            " AND user_id = ANY(%s)",
            (pending + pending_opened,),
        )
        for (user,) in rows:
            if user in pending:
                script.found["revoked_unwatched"][user] = t - script.booked_at[f"revoked:{user}"]
            else:  # found by its daily check before the page opened: shown when it opened
                opened = script.booked_at.get(f"opened:{user}", t)
                script.found["revoked_opened"][user] = t - opened
    gap = {u: e for u, e in script.gap_events.items() if u not in script.found["gap"]}
    if gap:
        rows = s.sql(
            "SELECT event_uri FROM meetings WHERE event_uri = ANY(%s)", (list(gap.values()),)
        )
        present = {r[0] for r in rows}
        for user, event in gap.items():
            if event in present:
                if user.startswith("watched:"):
                    script.found["watched_booking"][user] = t - script.booked_at[user]
                    script.found["gap"][user] = 0
                else:
                    script.found["gap"][user] = t - outage_end
    if t >= outage_end and len(script.found["recreated"]) < len(script.disabled):
        subs = (await _control(http, s, "GET", "/_sandbox/subscriptions"))["subscriptions"]
        active = {str(sub["user"]).rsplit("/", 1)[-1] for sub in subs if sub["state"] == "active"}
        for user in script.disabled:
            if user not in script.found["recreated"] and script.sandbox_ids[user] in active:
                script.found["recreated"][user] = t - outage_end


# -------------------------------------------------------------------------- the figures
def summarize(
    calls: list[dict[str, Any]],
    groups: dict[str, list[str]],
    uri_of: dict[str, str],
    window: tuple[datetime, datetime],
    follow_up: tuple[datetime, datetime] | None = None,
) -> dict[str, Any]:
    """Calls per connection per day by class and route, at the rate of `window` (an ordinary
    stretch of the day); the calls within `follow_up` (an outage's) per connection apart."""
    group_of = {uri_of[u]: g for g, users in groups.items() for u in users if u in uri_of}
    by_class: dict[str, Counter[str]] = defaultdict(Counter)
    after_outage: Counter[str] = Counter()
    whole_day: Counter[str] = Counter()
    per_minute: Counter[tuple[str, str, int]] = Counter()
    for call in calls:
        group = group_of.get(str(call.get("user")))
        if group is None:
            continue
        at = _at(call)
        kind = "token" if call["route"] == "POST /oauth/token" else "api"
        per_minute[(str(call["user"]), kind, int(at.timestamp() // 60))] += 1
        whole_day[group] += 1
        if window[0] <= at < window[1]:
            by_class[group][call["route"]] += 1
        if follow_up is not None and follow_up[0] <= at < follow_up[1]:
            after_outage[group] += 1
    days = (window[1] - window[0]).total_seconds() / 86_400
    out: dict[str, Any] = {}
    for group, users in groups.items():
        routes = by_class.get(group, Counter())
        n = max(len(users), 1)
        out[group] = {
            "connections": len(users),
            "per_connection_per_day": round(sum(routes.values()) / n / days, 2),
            "by_route": {r: round(c / n / days, 3) for r, c in sorted(routes.items())},
            "whole_day_per_connection": round(whole_day[group] / n, 2),
        }
        if follow_up is not None:
            out[group]["outage_follow_up_per_connection"] = round(after_outage[group] / n, 2)
    api = [c for (_, kind, _), c in per_minute.items() if kind == "api"]
    token = [c for (_, kind, _), c in per_minute.items() if kind == "token"]
    out["busiest_user_minute"] = {"api": max(api, default=0), "token": max(token, default=0)}
    return out


def _users(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{k}" for k in range(n)]


def run(cfg: DayConfig | None = None, log: Any = print) -> dict[str, Any]:
    cfg = cfg or DayConfig()
    rng = random.Random(cfg.seed)
    results: dict[str, Any] = {"hours": cfg.hours, "step_seconds": cfg.step_seconds}
    results["connections"] = cfg.idle_paid + cfg.active_paid + cfg.free_watched + cfg.free_unwatched
    # ------------------------------------------------------------ today's defaults
    idle = _users("idle", cfg.idle_paid)
    mix = Mix(
        {
            "idle_paid": idle,
            "active_paid": _users("active", cfg.active_paid),
            "free_watched": _users("watched", cfg.free_watched),
            "free_unwatched": _users("free", cfg.free_unwatched),
        }
    )
    special = rng.sample(idle, cfg.revoked_unwatched + cfg.revoked_opened + cfg.disabled_in_outage)
    revoked_unwatched = special[: cfg.revoked_unwatched]
    revoked_opened = special[cfg.revoked_unwatched : cfg.revoked_unwatched + cfg.revoked_opened]
    disabled = special[cfg.revoked_unwatched + cfg.revoked_opened :]
    with stack("worker-day") as s:
        s.start_services(1)
        started = time.monotonic()
        asyncio.run(connect_mix(s, mix, cfg.concurrency))
        log(
            f"  today's defaults: {sum(map(len, mix.groups.values())):,} connections made in"
            f" {time.monotonic() - started:.0f} s"
        )
        uri_of, sandbox_ids = _identities(s)
        script = Script(
            revoked_unwatched=revoked_unwatched,
            revoked_opened=revoked_opened,
            disabled=disabled,
            watched=mix.groups["free_watched"],
            active=mix.groups["active_paid"],
            watched_booker=mix.groups["free_watched"][0],
            sandbox_ids=sandbox_ids,
        )
        # The special ones are counted apart: their calls are those of their event.
        groups = {g: [u for u in users if u not in special] for g, users in mix.groups.items()}
        day = asyncio.run(run_day(s, cfg, mix, script, {}))
        # The ordinary rate: the hours before the outage (the steady state: nothing there is
        # the outage's). Its follow-up, from its end: the sweep's settle and spread and the
        # passes they start (15 minutes, the promise), counted apart.
        begun, ended = (day["start"] + timedelta(hours=h) for h in cfg.outage)
        results["today"] = summarize(
            day["calls"],
            groups,
            uri_of,
            (day["start"], begun),
            (ended, ended + timedelta(seconds=FOLLOW_UP_SECONDS)),
        )
        results["today"]["real_seconds"] = day["real_seconds"]
        # Seen at the end of a step: each figure is at most this (the step's resolution).
        results["detection_seconds"] = {
            promise: max(script.found[promise].values(), default=-cfg.step_seconds)
            + cfg.step_seconds
            for promise in (
                "recreated",
                "gap",
                "revoked_unwatched",
                "revoked_opened",
                "watched_booking",
            )
        }
        results["detected"] = {
            promise: f"{len(script.found[promise])}/{expected}"
            for promise, expected in (
                ("recreated", len(disabled)),
                ("gap", len(disabled) + 1),
                ("revoked_unwatched", len(revoked_unwatched)),
                ("revoked_opened", len(revoked_opened)),
                ("watched_booking", 1),
            )
        }
        # Every call of ours in the follow-up's 15 minutes, the disabled ones' repairs included
        # (and the few ordinary calls of those minutes: about 10,000 x 1.5 / 96).
        ours = set(uri_of.values())
        follow_up_calls = sum(
            1
            for call in day["calls"]
            if str(call.get("user")) in ours
            and ended <= _at(call) < ended + timedelta(seconds=FOLLOW_UP_SECONDS)
        )
        results["outage_follow_up"] = {
            "calls": round(follow_up_calls),
            "worker_real_seconds": round(script.follow_up_real_seconds, 1),
            "calls_per_real_second": round(
                follow_up_calls / max(script.follow_up_real_seconds, 0.001)
            ),
        }
        log(
            f"  today's defaults: the day took {day['real_seconds']:.0f} s;"
            f" {results['today']['idle_paid']['per_connection_per_day']} calls per idle paid"
            f" connection; detection {results['detection_seconds']}"
        )
    # ------------------------------------------------------------ the old defaults
    old = Mix(
        {
            "idle_paid": _users("idle", cfg.old_idle_paid),
            "free_unwatched": _users("free", cfg.old_free_unwatched),
        }
    )
    with stack("worker-day-old") as s:
        s.start_services(1)
        asyncio.run(connect_mix(s, old, cfg.concurrency))
        uri_of, _ = _identities(s)
        day = asyncio.run(run_day(s, cfg, old, None, OLD_DEFAULTS))
        results["old_defaults"] = summarize(
            day["calls"],
            old.groups,
            uri_of,
            (day["start"], day["start"] + timedelta(hours=cfg.hours)),
        )
        log(
            f"  old defaults: {results['old_defaults']['idle_paid']['per_connection_per_day']}"
            " calls per idle paid connection"
        )
    today, before = results["today"], results["old_defaults"]
    results["calls_per_idle_connection_per_day"] = today["idle_paid"]["per_connection_per_day"]
    # Free-plan costs depend on the hours watched: the whole day's (2 hours watched).
    results["calls_per_free_connection_per_day"] = {
        "watched_2_hours": today["free_watched"]["whole_day_per_connection"],
        "unwatched": today["free_unwatched"]["whole_day_per_connection"],
        "old_defaults_unwatched": before["free_unwatched"]["whole_day_per_connection"],
    }
    results["old_calls_per_idle_connection_per_day"] = before["idle_paid"]["per_connection_per_day"]
    busiest = today["busiest_user_minute"]
    results["rate_limits_kept"] = (
        busiest["api"] <= FREE_LIMIT_PER_MINUTE and busiest["token"] <= TOKEN_LIMIT_PER_MINUTE
    )
    found = results["detected"]
    results["ok"] = all(a == b for a, b in (v.split("/") for v in found.values()))
    if not results["ok"]:
        results["problems"] = [f"{k}: {v} detected" for k, v in found.items()]
    return results


def _at(call: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(call["at"]).replace("Z", "+00:00"))


def _identities(s: Stack) -> tuple[dict[str, str], dict[str, str]]:
    """Our user id -> its Calendly user URI, and -> its sandbox user id."""
    rows = s.sql("SELECT user_id, calendly_user_uri FROM calendar_connections")
    uri_of = {str(u): str(uri) for u, uri in rows}
    return uri_of, {u: uri.rsplit("/", 1)[-1] for u, uri in uri_of.items()}
