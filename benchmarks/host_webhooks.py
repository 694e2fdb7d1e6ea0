"""Benchmark 6 (booking to host webhook delivered): one host webhook endpoint (HOST_WEBHOOK_URL)
pointing at a receiver in this process (aiohttp on loopback, its own thread and event loop) that
verifies every delivery with `standardwebhooks` and records when it arrived; `calendly-connect
host-webhooks run` (the dispatcher) delivering to it; 2 service processes.

- Latency: signed new bookings (invitee.created) for random users at 50/s; the time from the
  webhook POST to the service to its `meeting.created` arriving at the receiver. Every booking
  must arrive exactly once, verified, for its own user.
- Ingest beside it: benchmark 1's load (wrk, 32 connections, the same delivery mix, 2
  processes), with the endpoint configured and the dispatcher delivering, and without (no
  endpoint, no dispatcher), interleaved A/B in the same stack; the ratio of the two rates.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from benchmarks import ingest, live
from benchmarks.deliveries import make_mix
from benchmarks.load import median, percentile, wrk
from benchmarks.stack import Stack, User, cpu_used, stack
from entrypoints.developer.launcher import Process, stop_processes

ENDPOINT = "bench"
HOOK_PATH = "/host-hook"


@dataclass
class Config:
    users: int = 50
    processes: int = 2
    rate: float = 50.0  # bookings per second
    seconds: float = 10.0  # of the latency run, and of each ingest run
    repeats: int = 3
    warmup_seconds: int = 2
    ingest: bool = True  # also the ingest A/B (the smoke test leaves it out)
    connections: int = 32
    drain_seconds: float = 30.0


@dataclass
class Arrival:
    event: str
    user_id: str
    event_uri: str | None
    at: float  # perf_counter


@dataclass
class Receiver:
    """The host's endpoint: verifies each POST with standardwebhooks, records it, answers 204."""

    secret: str
    arrivals: dict[str, list[Arrival]] = field(default_factory=lambda: defaultdict(list))
    rejected: list[str] = field(default_factory=list)
    url: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.perf_counter()
        try:
            message = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.rejected.append(repr(exc))
            return web.Response(status=400)
        data = message["data"]
        meeting = data.get("meeting") or {}
        self.arrivals[request.headers["webhook-id"]].append(
            Arrival(message["type"], data["user_id"], meeting.get("event_uri"), now)
        )
        return web.Response(status=204)

    def start(self) -> str:
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post(HOOK_PATH, self.handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
            loop.run_until_complete(site.start())
            port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}{HOOK_PATH}"
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="host-webhook-receiver", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the host webhook receiver did not start")
        return self.url

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def reset(self) -> None:
        self.arrivals = defaultdict(list)
        self.rejected = []

    def delivered(self) -> int:
        return sum(len(a) for a in self.arrivals.values())


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Dispatcher:
    """`calendly-connect host-webhooks run` with the receiver as its one endpoint; each start
    configures a fresh endpoint (at the end of the feed), each stop removes it again."""

    def __init__(self, s: Stack, receiver: Receiver) -> None:
        self.s, self.receiver = s, receiver
        self.proc: Process | None = None

    def start(self) -> None:
        self.stop()
        self.proc = self.s.local.start_host_webhooks(
            HOST_WEBHOOK_URL=f"{ENDPOINT}={self.receiver.url}",
            HOST_WEBHOOK_SECRET=f"{ENDPOINT}={self.receiver.secret}",
        )
        deadline = time.monotonic() + 30
        while not self.s.sql("SELECT 1 FROM host_webhook_endpoints WHERE name = %s", (ENDPOINT,)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the host webhooks' dispatcher did not start (see its log)")
            time.sleep(0.05)

    def backlog(self) -> int:
        """Changes not delivered yet: fanned out but not sent, and not fanned out yet."""
        rows = self.s.sql(
            "SELECT coalesce((SELECT sum(head_seq - sent_seq) FROM host_webhook_streams), 0)"
            " + (SELECT count(*) FROM change_log c, host_webhook_endpoints e"
            "    WHERE (c.xid, c.id) > (e.fan_xid, e.fan_id))"
        )
        return int(rows[0][0])

    def drain(self, seconds: float) -> float | None:
        """Seconds until the backlog is delivered (None: not within `seconds`)."""
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if self.backlog() == 0:
                return time.monotonic() - started
            time.sleep(0.1)
        return None

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.proc is not None:
            stop_processes([self.proc], grace=2.0)  # a backlog left behind is not measured
            self.s.local.forget(self.proc)
            self.proc = None
        # No endpoint configured any more, and no history: the next start sends only what
        # happens after it. (The log is emptied too because a stream that a new endpoint opens
        # for a user starts at that user's first change still in the log, not at the end.)
        self.s.sql("DELETE FROM host_webhook_endpoints")
        self.s.sql("TRUNCATE change_log")


# ----------------------------------------------------------------------- latency
async def wait_for(receiver: Receiver, sent: dict[str, tuple[User, float]], seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        got = {a.event_uri for arr in list(receiver.arrivals.values()) for a in arr}
        if sent.keys() <= got:
            await asyncio.sleep(0.5)  # a moment more: a duplicate would show now
            return
        await asyncio.sleep(0.05)


def check(receiver: Receiver, sent: dict[str, tuple[User, float]]) -> dict[str, Any]:
    """Every booking's meeting.created arrived exactly once, verified, for its own user."""
    problems: list[str] = []
    created: dict[str, list[Arrival]] = defaultdict(list)
    kinds: Counter[str] = Counter()
    repeated_ids = 0
    for arrivals in receiver.arrivals.values():
        repeated_ids += len(arrivals) - 1
        for a in arrivals:
            kinds[a.event] += 1
            if a.event == "meeting.created" and a.event_uri is not None:
                created[a.event_uri].append(a)
    latencies = []
    missing = duplicated = wrong_user = 0
    for uri, (user, posted) in sent.items():
        got = created.get(uri, [])
        if not got:
            missing += 1
            continue
        duplicated += len(got) > 1
        wrong_user += any(a.user_id != user.user_id for a in got)
        latencies.append((got[0].at - posted) * 1000)
    unsent = created.keys() - sent.keys()
    if missing:
        problems.append(f"{missing} of {len(sent)} bookings never delivered to the host")
    if duplicated or repeated_ids:
        problems.append(f"{duplicated} bookings delivered twice; {repeated_ids} webhook-ids twice")
    if wrong_user:
        problems.append(f"{wrong_user} bookings delivered under another user")
    if unsent:
        problems.append(f"{len(unsent)} meeting.created for bookings never sent")
    others = sum(n for kind, n in kinds.items() if kind != "meeting.created")
    if others:
        problems.append(f"{others} events other than meeting.created: {dict(kinds)}")
    if receiver.rejected:
        problems.append(f"{len(receiver.rejected)} deliveries failed verification")
    return {
        "p50_ms": percentile(latencies, 50) if latencies else float("nan"),
        "p99_ms": percentile(latencies, 99) if latencies else float("nan"),
        "max_ms": max(latencies) if latencies else float("nan"),
        "sent": len(sent),
        "delivered": sum(len(created.get(uri, [])) for uri in sent),  # of the bookings sent
        "events": dict(kinds),
        "ok": not problems,
        "problems": problems,
    }


async def bookings(
    s: Stack, receiver: Receiver, users: list[User], cfg: Config, tag: str, seed: int
) -> dict[str, Any]:
    paced = live.Config(users=len(users), rate=cfg.rate, seconds=cfg.seconds)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=30)
    ) as http:
        receiver.reset()
        sent, problems, answered = await live.deliver(http, s.url, users, paced, tag, seed)
        await wait_for(receiver, sent, cfg.drain_seconds)
    run = check(receiver, sent)
    run["problems"] = problems[:5] + run["problems"]
    run["ok"] = not run["problems"]
    run["post_p99_ms"] = percentile(answered, 99) if answered else float("nan")
    return run


# ------------------------------------------------------------------------ ingest
def ingest_run(
    s: Stack,
    users: list[User],
    cfg: Config,
    tag: str,
    size: int,
    workdir: Path,
    dispatcher: Dispatcher | None,
) -> dict[str, Any]:
    """Benchmark 1's measured run (warmed up first), with or without the dispatcher delivering
    to the configured endpoint; the database is checked against the answered deliveries."""
    icfg = ingest.Config(
        seconds=int(cfg.seconds), connections=cfg.connections, warmup_seconds=cfg.warmup_seconds
    )
    ingest.warm_up(s, users, icfg, workdir, tag)
    ingest.truncate(s)
    if dispatcher is not None:
        # A fresh endpoint at the end of the feed: the warm-up's changes are not its backlog.
        dispatcher.start()
        dispatcher.receiver.reset()
    mix = make_mix(users, size, tag)
    path = workdir / f"{tag}.requests"
    mix.write(path, s.url.removeprefix("http://"))
    own_cpu = time.process_time()  # this process: mostly the receiver's thread (wrk is a child)
    hook_cpu = dispatcher.cpu_seconds() if dispatcher is not None else 0.0
    pg_before = s.postgres_cpu()
    result = wrk(s.url, path, connections=cfg.connections, seconds=int(cfg.seconds), record=True)
    ended = time.monotonic()
    pg_cpu = cpu_used(pg_before, s.postgres_cpu())
    own_cpu = time.process_time() - own_cpu
    hook_cpu = dispatcher.cpu_seconds() - hook_cpu if dispatcher is not None else 0.0
    delivered = dispatcher.receiver.delivered() if dispatcher is not None else 0
    drained: float | None = None
    repeated = 0
    if dispatcher is not None:
        # The deliveries the run left behind (the dispatcher yields the CPU to ingest, DR-37):
        # how long until they are all out, and that none went twice.
        s.settle()
        if dispatcher.drain(cfg.drain_seconds * 4) is not None:
            drained = time.monotonic() - ended  # counted from the end of the load
        repeated = sum(len(a) - 1 for a in dispatcher.receiver.arrivals.values())
    rejected = len(dispatcher.receiver.rejected) if dispatcher is not None else 0
    total = dispatcher.receiver.delivered() if dispatcher is not None else 0
    if dispatcher is not None:
        dispatcher.stop()
    s.settle()
    verdict = ingest.verify(s, mix, result)
    path.unlink()
    problems = verdict.problems[:5]
    if rejected:
        problems.append(f"{rejected} host webhooks failed verification")
    if dispatcher is not None and drained is None:
        problems.append(f"the host webhook backlog was not delivered in {cfg.drain_seconds * 4} s")
    if repeated:
        problems.append(f"{repeated} host webhooks delivered twice")
    return {
        "rate": result.rate,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "host_webhooks_delivered_during_run": delivered,
        # ... and in all, once the backlog the run left was delivered (and how long that took)
        "host_webhooks_delivered": total,
        "drain_seconds": round(drained, 1) if drained is not None else None,
        # CPU seconds per second of the run: the dispatcher, and the receiver (this process)
        "dispatcher_cpu": round(hook_cpu / cfg.seconds, 3),
        "receiver_cpu": round(own_cpu / cfg.seconds, 3),
        "postgres_cpu": round(pg_cpu / cfg.seconds, 3),
        "postgres_cpu_ms_per_delivery": round(pg_cpu * 1000 / max(1, result.requests), 3),
        "ok": verdict.ok and not rejected,
        "problems": problems,
    }


# --------------------------------------------------------------------------- run
def run(cfg: Config, log: Any = print) -> dict[str, Any]:
    receiver = Receiver(new_secret())
    receiver.start()
    try:
        with stack("host-webhooks") as s:
            s.start_services(cfg.processes)
            users = asyncio.run(s.connect_users([f"hook-{n}" for n in range(cfg.users)]))
            dispatcher = Dispatcher(s, receiver)
            try:
                return measure(s, users, cfg, dispatcher, log)
            finally:
                dispatcher.stop()
    finally:
        receiver.stop()


def measure(
    s: Stack, users: list[User], cfg: Config, dispatcher: Dispatcher, log: Any
) -> dict[str, Any]:
    receiver = dispatcher.receiver
    latency_runs: list[dict[str, Any]] = []
    with_runs: list[dict[str, Any]] = []
    without_runs: list[dict[str, Any]] = []
    size = ingest.mix_size(cfg.seconds)
    for repeat in range(cfg.repeats):
        dispatcher.start()
        if repeat == 0 and cfg.warmup_seconds:
            warm = Config(**{**cfg.__dict__, "seconds": float(cfg.warmup_seconds)})
            asyncio.run(bookings(s, receiver, users, warm, "warm", 99))
        run = asyncio.run(bookings(s, receiver, users, cfg, f"r{repeat}", repeat))
        dispatcher.stop()
        latency_runs.append(run)
        log(
            f"  booking to host webhook, run {repeat + 1}: p50 {run['p50_ms']:.1f} ms "
            f"p99 {run['p99_ms']:.1f} ms, {run['delivered']}/{run['sent']} delivered "
            f"{'ok' if run['ok'] else 'WRONG ' + str(run['problems'][:3])}"
        )
        if not cfg.ingest:
            continue
        # Interleaved A/B, the order alternating per repeat so drift hits both alike.
        order = (False, True) if repeat % 2 == 0 else (True, False)
        for configured in order:
            tag = f"r{repeat}{'with' if configured else 'without'}"
            figures = ingest_run(
                s, users, cfg, tag, size, s.workdir, dispatcher if configured else None
            )
            (with_runs if configured else without_runs).append(figures)
            size = max(size, ingest.mix_size(cfg.seconds, figures["rate"]))
            log(
                f"  ingest {'with' if configured else 'without'} the host webhook endpoint, "
                f"run {repeat + 1}: {figures['rate']:.0f}/s p99 {figures['p99_ms']:.1f} ms"
                + (
                    f", {figures['host_webhooks_delivered_during_run']} host webhooks delivered"
                    f" meanwhile, all {figures['host_webhooks_delivered']} "
                    f"{figures['drain_seconds']} s after"
                    if configured
                    else ""
                )
                + (" ok" if figures["ok"] else f" WRONG {figures['problems'][:3]}")
            )
    all_runs = latency_runs + with_runs + without_runs
    result: dict[str, Any] = {
        "latency_ok": all(r["ok"] for r in latency_runs),
        "ingest_ok": all(r["ok"] for r in with_runs + without_runs),
        "p50_ms": median([r["p50_ms"] for r in latency_runs]),
        "p99_ms": median([r["p99_ms"] for r in latency_runs]),
        "sent": sum(r["sent"] for r in latency_runs),
        "delivered": sum(r["delivered"] for r in latency_runs),
        "rate": cfg.rate,
        "users": cfg.users,
        "processes": cfg.processes,
        "ok": all(r["ok"] for r in all_runs),
        "problems": [p for r in all_runs for p in r["problems"]],
        "runs": latency_runs,
    }
    if with_runs and without_runs:
        with_rate = median([r["rate"] for r in with_runs])
        without_rate = median([r["rate"] for r in without_runs])
        result["ingest_with"] = {
            "rate": with_rate,
            "p99_ms": median([r["p99_ms"] for r in with_runs]),
            "host_webhooks_delivered_per_second": median(
                [r["host_webhooks_delivered_during_run"] / cfg.seconds for r in with_runs]
            ),
            "drain_seconds": median([r["drain_seconds"] or float("inf") for r in with_runs]),
            "dispatcher_cpu": median([r["dispatcher_cpu"] for r in with_runs]),
            "postgres_cpu": median([r["postgres_cpu"] for r in with_runs]),
            "postgres_cpu_ms_per_delivery": median(
                [r["postgres_cpu_ms_per_delivery"] for r in with_runs]
            ),
            "receiver_cpu": median([r["receiver_cpu"] for r in with_runs]),
            "runs": with_runs,
        }
        result["ingest_without"] = {
            "rate": without_rate,
            "p99_ms": median([r["p99_ms"] for r in without_runs]),
            "postgres_cpu": median([r["postgres_cpu"] for r in without_runs]),
            "postgres_cpu_ms_per_delivery": median(
                [r["postgres_cpu_ms_per_delivery"] for r in without_runs]
            ),
            "runs": without_runs,
        }
        result["ingest_ratio"] = with_rate / without_rate if with_rate and without_rate else None
    return result
