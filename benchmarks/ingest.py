"""Benchmark 1: webhook ingest at 32 connections to 1 and 2 service processes, beside pgbench
running the same transaction's SQL and a bare Litestar endpoint under the same server.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.postgres.group_commit import BATCH_SETTINGS, LOCK_USERS, RING_WATCHED
from adapters.postgres.roles import DEFAULT_RUNTIME_ROLE
from adapters.postgres.session import SET_TENANT
from adapters.postgres.webhook_events import RECORD_AND_APPLY_PLAIN
from benchmarks.deliveries import BASE, Mix, body_for, make_mix
from benchmarks.load import WrkResult, median, pgbench, wrk
from benchmarks.stack import CpuReading, Stack, User, stack

COLON = "chr(58)"
CORES = len(os.sched_getaffinity(0))  # the cores this process (and what it starts) may use
PER_USER_TABLES = ("meeting_invitees", "meetings", "calendly_webhook_events")


@dataclass
class Config:
    seconds: int = 10
    repeats: int = 3
    connections: int = 32
    users: int = 50
    warmup_seconds: int = 2
    processes: tuple[int, ...] = (1, 2)
    references: bool = True


@dataclass
class Verdict:
    ok: bool
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def truncate(s: Stack) -> None:
    s.settle()
    s.sql(f"TRUNCATE {', '.join(PER_USER_TABLES)}")


def verify(s: Stack, mix: Mix, result: WrkResult) -> Verdict:
    """The database holds exactly what the answered deliveries say, and nothing unsent.

    Deliveries still in flight when wrk stopped (sent, never answered) may or may not have
    committed; each is allowed either way, and nothing else is.
    """
    problems: list[str] = []
    if result.wraps:
        problems.append(f"the mix ran out ({result.wraps} wraps): the check would be unsound")
        return Verdict(False, problems)
    sent = mix.deliveries[: result.sent]
    by_rid = {d.rid: d for d in sent}
    acked: dict[str, tuple[int, str]] = {}
    for rid, status, outcome in result.acks:
        if rid not in by_rid:
            problems.append(f"an answer for a request never sent: {rid}")
            continue
        acked[rid] = (status, outcome)
    bad = Counter(status for status, _ in acked.values() if status != 200)
    if bad:
        problems.append(f"non-200 answers: {dict(bad)}")
    if result.error_count:
        problems.append(f"wrk errors: {result.errors}")
    copies: dict[str, list[str]] = defaultdict(list)  # event key -> rids of every copy sent
    for d in sent:
        copies[d.event_key].append(d.rid)
    answered_keys = {by_rid[r].event_key for r in acked}
    stored = {
        row[0]: row[1] for row in s.sql("SELECT event_id, outcome FROM calendly_webhook_events")
    }
    missing = answered_keys - stored.keys()
    if missing:
        problems.append(f"{len(missing)} answered deliveries not recorded, e.g. {min(missing)}")
    unsent = stored.keys() - copies.keys()
    if unsent:
        problems.append(f"{len(unsent)} recorded deliveries were never sent")
    not_applied = [k for k, outcome in stored.items() if outcome != "applied"]
    if not_applied:
        problems.append(f"{len(not_applied)} deliveries recorded as not applied")
    # Exactly one copy of each delivery takes effect; every other answered copy is a duplicate.
    for key, rids in copies.items():
        outcomes = [acked[r][1] for r in rids if r in acked]
        applied = outcomes.count("applied")
        if applied > 1 or any(o not in ("applied", "duplicate") for o in outcomes):
            problems.append(f"{key}: answers {outcomes}")
        elif len(outcomes) == len(rids) and applied != 1:
            problems.append(f"{key}: every copy answered, {applied} applied")
    # The meetings and invitees are exactly those of the recorded deliveries.
    expected: dict[str, str] = {}
    for d in sent:
        if d.event_key in stored:
            was = expected.get(d.invitee_uri, "active")
            expected[d.invitee_uri] = "canceled" if d.kind == "cancel" else was
    invitees = dict(s.sql("SELECT invitee_uri, status FROM meeting_invitees"))
    meetings = dict(s.sql("SELECT event_uri, status FROM meetings"))
    if invitees != expected:
        wrong = {k for k in expected.keys() | invitees.keys() if invitees.get(k) != expected.get(k)}
        problems.append(f"{len(wrong)} invitees differ from the deliveries, e.g. {min(wrong)}")
    expected_meetings = {uri.rsplit("/invitees/", 1)[0]: st for uri, st in expected.items()}
    if meetings != expected_meetings:
        problems.append(
            f"meetings differ: {len(meetings)} stored, {len(expected_meetings)} expected"
        )
    owners = s.sql(
        "SELECT count(*) FROM meetings m JOIN calendar_connections c ON c.id = m.connection_id"
        " WHERE c.user_id <> m.user_id"
    )
    if owners[0][0]:
        problems.append(f"{owners[0][0]} meetings stored under the wrong user")
    kinds = Counter(by_rid[r].kind for r in acked)
    counts = {
        "answered": len(acked),
        "in_flight_at_stop": len(sent) - len(acked),
        "new_bookings": kinds["book"],
        "duplicates": kinds["dup"],
        "cancels": kinds["cancel"],
        "meetings": len(meetings),
        "events_recorded": len(stored),
    }
    return Verdict(not problems, problems, counts)


# ------------------------------------------------------------- pgbench reference
def _pg(sql: str, values: dict[str, str]) -> str:
    """A statement of the service with its psycopg placeholders replaced for pgbench."""

    def sub(match: re.Match[str]) -> str:
        return values[match.group(1)]

    return re.sub(r"%\((\w+)\)s", sub, sql).strip()


def pgbench_script(users: int) -> str:
    """The webhook path's SQL as the service runs it, statement for statement, one delivery
    per transaction (the service shares transactions among concurrent deliveries, DR-48).

    70 % new bookings (record + merge), 20 % exact duplicates (the record conflicts, nothing
    else, rolled back as the service does), 10 % cancels (record + merge into one of a few
    hundred existing meetings). `bench_routes` maps a number to a connection's route (its user,
    connection and version), as the service keeps it (DR-60).
    """
    event = f"'{BASE}/scheduled_events/pg-' || :ev::text"
    invitee = f"({event} || '/invitees/pg-' || :ev::text)"
    canceled_event = f"'{BASE}/scheduled_events/pgc-' || :cx::text"
    canceled_invitee = f"({canceled_event} || '/invitees/pgc-' || :cx::text)"
    common = {
        "user_id": ":user_id",
        "connection_id": ":connection_id::uuid",
        "name": "'30 Minute Meeting'",
        # pgbench would take ":30" inside a literal for a variable: no colons in literals.
        "start_time": "to_timestamp(1898346600)",  # 2030-03-05 14 h 30 UTC
        "end_time": "to_timestamp(1898348400)",
        "location": """'{"type": "zoom", "join_url": "https://zoom.example/j/1"}'::jsonb""",
        "email": "'guest@guest.example'",
        "i_name": "'Guest'",
        "timezone": "'Europe/Berlin'",
        "rescheduled": "false",
        "old_invitee_uri": "NULL",
        "new_invitee_uri": "NULL",
        "no_show": "NULL",
        "no_show_at": "NULL",
        # Today's deliveries carry their event: nothing to read from Calendly (DR-47).
        "needs_details": "false",
        "details_for": "NULL",
        "details_error": "NULL",
    }
    cancel_json = (
        """'{"canceled_by": "Guest", "reason": "conflict", "canceler_type": "invitee"}'::jsonb"""
    )

    def record(event_id: str, event_type: str) -> dict[str, str]:
        return {
            "event_id": event_id,
            "event_type": f"'{event_type}'",
            "payload": ":payload",
            "raw": "NULL",
            "user_id": ":user_id",
            "connection_id": ":connection_id::uuid",
            "outcome": "'applied'",
            "reason": "NULL",
            "route_version": ":version",
        }

    def deliver(event_id: str, event_type: str, meeting: dict[str, str]) -> str:
        """The delivery's one statement: recorded, and merged unless a duplicate (a delivery
        that carries its event: the plain statement, as the service sends it)."""
        return _pg(RECORD_AND_APPLY_PLAIN, {**common, **meeting, **record(event_id, event_type)})

    book = {
        "event_uri": event,
        "status": "'active'",
        "cancellation": "NULL",
        "invitee_uri": invitee,
        "i_status": "'active'",
        "i_cancellation": "NULL",
    }
    cancel = {
        "event_uri": canceled_event,
        "status": "'canceled'",
        "cancellation": cancel_json,
        "invitee_uri": canceled_invitee,
        "i_status": "'canceled'",
        "i_cancellation": cancel_json,
    }

    # The service's statements with a batch of one (DR-48): in the delivery's transaction the
    # lock timeout (and the trigger's doorbell off), the users' locks, the tenant, the record
    # (which checks its route, DR-60), the doorbells of the users someone listens for (DR-57).
    # The service keeps the routes it found (DR-60) and looks none up per delivery; pgbench
    # needs a lookup to pick its variables, so it reads them from a small copy of the routes
    # (`bench_routes`, made beforehand), not from the routes themselves.
    route = "SELECT user_id, connection_id, version FROM bench_routes WHERE n = :n"
    head = "\n".join(
        [
            f"{route}\n\\gset",
            "BEGIN;",
            # The statement as the service sends it, but without a limit: a batch whose lock
            # wait times out is written again alone, without one (DR-48), so for a batch of one
            # the outcome is a transaction that waited. (With the limit, one wait beyond it on
            # a slow machine aborted pgbench's run.)
            BATCH_SETTINGS.replace("%s", "'0'") + ";",
            LOCK_USERS.replace("%s", "ARRAY[:user_id::text]") + ";",
            SET_TENANT.replace("%s", ":user_id") + ";",
        ]
    )
    ring = (
        RING_WATCHED.replace("'meetings:'", f"'meetings' || {COLON}").replace(
            "%s", "ARRAY[:user_id::text]"
        )
        + ";"
    )
    new_key = f":connection_id::text || {COLON} || 'invitee.created' || {COLON} || {invitee}"
    cancel_key = (
        f":connection_id::text || {COLON} || 'invitee.canceled' || {COLON} || {canceled_invitee}"
        f" || {COLON} || :ev::text"
    )
    return "\n".join(
        [
            "\\set r random(1, 100)",
            f"\\set n random(0, {users - 1})",
            "\\set ev random(1, 9000000000000000000)",
            "\\set cx random(1, 300)",
            "\\if :r <= 20",
            head,
            deliver(f":connection_id::text || {COLON} || 'pg-duplicate'", "invitee.created", book)
            + ";",
            ring,
            "COMMIT;",
            "\\elif :r <= 30",
            head,
            deliver(cancel_key, "invitee.canceled", cancel) + ";",
            ring,
            "COMMIT;",
            "\\else",
            head,
            deliver(new_key, "invitee.created", book) + ";",
            ring,
            "COMMIT;",
            "\\endif",
            "",
        ]
    )


def prepare_pgbench(s: Stack, users: list[User]) -> None:
    s.sql(
        "CREATE TABLE IF NOT EXISTS bench_routes"
        " (n int PRIMARY KEY, user_id text, connection_id text, version text)"
    )
    s.sql("TRUNCATE bench_routes")
    for n, u in enumerate(users):
        s.sql(
            "INSERT INTO bench_routes SELECT %s, user_id, connection_id::text, xmin::text"
            " FROM calendly_webhook_routes WHERE webhook_token = %s",
            (n, u.webhook_token),
        )
    s.sql(f"GRANT SELECT ON bench_routes TO {DEFAULT_RUNTIME_ROLE}")


def seed_pgbench_duplicates(s: Stack, users: list[User]) -> None:
    for u in users:
        s.sql(
            "INSERT INTO calendly_webhook_events (event_id, event_type, user_id, connection_id,"
            " outcome) VALUES (%s, 'invitee.created', %s, %s, 'applied')",
            (f"{u.connection_id}:pg-duplicate", u.user_id, u.connection_id),
        )


def run_pgbench(s: Stack, users: list[User], cfg: Config) -> dict[str, Any]:
    truncate(s)
    seed_pgbench_duplicates(s, users)
    prepare_pgbench(s, users)  # the routes' versions as they are now (the service may move them)
    sample = body_for(users[0], "pg-sample", "pg-sample", canceled=False).decode()
    result = pgbench(
        pgbench_script(len(users)),
        host=s.socket_dir(),
        dbname="calendly_connect",
        clients=cfg.connections,
        seconds=cfg.seconds,
        defines={"payload": sample},
        role=DEFAULT_RUNTIME_ROLE,
    )
    # A statement whose route check failed writes nothing, and would be measured as a no-op.
    ((written,),) = s.sql("SELECT count(*) FROM calendly_webhook_events")
    if result.transactions and written <= len(users):
        raise RuntimeError("pgbench wrote no delivery: its routes' versions are out of date")
    return {
        "rate": result.tps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "transactions": result.transactions,
        "failed": result.failed,
    }


# ----------------------------------------------------------------- the service
BARE_COMMAND = [sys.executable, "-m", "benchmarks.bare_app", "--fd", "{fd}"]


def run_service(
    s: Stack, users: list[User], cfg: Config, tag: str, size: int, workdir: Path
) -> tuple[dict[str, Any], Verdict]:
    """One measured run against whatever listens on the stack's socket (services warmed up)."""
    truncate(s)
    mix = make_mix(users, size, tag)
    path = workdir / f"{tag}.requests"
    mix.write(path, s.url.removeprefix("http://"))
    before = CpuReading.take(s)
    result = wrk(s.url, path, connections=cfg.connections, seconds=cfg.seconds, record=True)
    s.settle()  # what was still in flight when wrk stopped is part of the run's CPU
    cpu_us = before.per_request_us(CpuReading.take(s), result.requests)
    verdict = verify(s, mix, result)
    path.unlink()
    figures = {
        "rate": result.rate,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "max_ms": result.max_ms,
        "requests": result.requests,
        "ok": verdict.ok,
        "problems": verdict.problems[:5],
        "counts": verdict.counts,
        "cpu_us": cpu_us,
    }
    return figures, verdict


def warm_up(s: Stack, users: list[User], cfg: Config, workdir: Path, tag: str) -> float:
    """Fill the pools and caches first: the first seconds of a process are not its speed.
    Returns the warm-up's rate (0 without one), for sizing the measured run's mix."""
    if cfg.warmup_seconds <= 0:
        return 0.0
    mix = make_mix(users, 3000 * cfg.warmup_seconds, f"warm-{tag}")
    path = workdir / "warm.requests"
    mix.write(path, s.url.removeprefix("http://"))
    result = wrk(s.url, path, connections=cfg.connections, seconds=cfg.warmup_seconds)
    path.unlink()
    return result.rate


def mix_size(seconds: float, *rates: float) -> int:
    """Deliveries enough for a run of `seconds` at 1.6 times the fastest of `rates` seen (a
    mix that runs out makes the run's check unsound, and fails it): at least 8,000, and 6,000
    a second (this machine's fastest hours have done 4,200/s on one process)."""
    return int(max(8000, 6000 * seconds, 1.6 * seconds * max(rates, default=0.0)))


def run_bare(
    s: Stack, users: list[User], cfg: Config, processes: int, workdir: Path
) -> dict[str, Any]:
    s.start_command(BARE_COMMAND, processes)
    mix = make_mix(users, 2000, "bare")
    path = workdir / "bare.requests"
    mix.write(path, s.url.removeprefix("http://"))
    if cfg.warmup_seconds:
        wrk(s.url, path, connections=cfg.connections, seconds=cfg.warmup_seconds)
    result = wrk(s.url, path, connections=cfg.connections, seconds=cfg.seconds)
    ok = result.error_count == 0 and set(result.statuses) == {"200"}
    return {"rate": result.rate, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "ok": ok}


def run(cfg: Config, log: Any = print) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    size = mix_size(cfg.seconds)
    with stack("ingest") as s:
        s.start_services(1)
        users = asyncio.run(s.connect_users([f"ingest-{n}" for n in range(cfg.users)]))
        workdir = s.workdir
        for repeat in range(cfg.repeats):
            for processes in cfg.processes:
                s.start_services(processes)
                warmed = warm_up(s, users, cfg, workdir, f"{repeat}-{processes}")
                size = max(size, mix_size(cfg.seconds, warmed))
                figures, verdict = run_service(
                    s, users, cfg, f"r{repeat}p{processes}", size, workdir
                )
                runs[f"service_{processes}"].append(figures)
                log(
                    f"  ingest {processes} process(es), run {repeat + 1}: "
                    f"{figures['rate']:.0f}/s p50 {figures['p50_ms']:.1f} ms "
                    f"p99 {figures['p99_ms']:.1f} ms {'ok' if verdict.ok else 'WRONG'}"
                    + ("" if verdict.ok else f" {verdict.problems[:3]}")
                    + "; CPU per delivery: "
                    + ", ".join(f"{k} {v:.0f} µs" for k, v in figures["cpu_us"].items())
                )
                # Never run short of distinct deliveries at the next run's pace.
                size = max(size, mix_size(cfg.seconds, figures["rate"]))
            if not cfg.references:
                continue
            s.stop_services()
            figures = run_pgbench(s, users, cfg)
            runs["pgbench"].append(figures)
            log(f"  pgbench, run {repeat + 1}: {figures['rate']:.0f} tx/s p99 {figures['p99_ms']}")
            for processes in cfg.processes:
                figures = run_bare(s, users, cfg, processes, workdir)
                runs[f"bare_{processes}"].append(figures)
                log(
                    f"  bare Litestar {processes} process(es), run {repeat + 1}: "
                    f"{figures['rate']:.0f}/s"
                )
            s.stop_services()
    summary: dict[str, Any] = {}
    for name, items in runs.items():
        summary[name] = {
            "rate": median([i["rate"] for i in items]),
            "p50_ms": median([i.get("p50_ms") for i in items]),
            "p99_ms": median([i.get("p99_ms") for i in items]),
            "ok": all(i.get("ok", True) for i in items),
            "runs": items,
        }
        if all("cpu_us" in i for i in items):
            cpu = {
                part: statistics.median(i["cpu_us"][part] for i in items)
                for part in items[0]["cpu_us"]
            }
            summary[name]["cpu_us"] = cpu
            # The rate at which this machine's cores would all be busy at that cost per delivery.
            summary[name]["cpu_ceiling"] = round(CORES * 1e6 / max(1.0, sum(cpu.values())))
    return summary
