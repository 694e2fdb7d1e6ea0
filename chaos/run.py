"""`make chaos`: the service under fire, then compared with Calendly's ground truth.

Two service processes and a worker on an embedded Postgres that this run controls, with the
sandbox delivering thousands of webhooks (bookings, cancels, reschedules in both orders,
no-shows; duplicated and shuffled) while Postgres is stopped hard and restarted, a service
process is SIGKILLed and restarted, the listener's connection is terminated, Calendly answers
429s and 5xx, and one user removes the app. Afterwards: 0 meetings lost, 0 effects applied
twice, 0 meetings visible to the wrong user, every connection in the right status. Loopback
only, bounded in count and time. Exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import psycopg

from calendly_sandbox import OAuthClient, SandboxConfig, serve
from calendly_sandbox.config import Settings as SandboxSettings
from calendly_sandbox.state import Sandbox
from entrypoints.developer.launcher import (
    EmbeddedPostgres,
    LocalStack,
    new_secrets,
    service_environment,
)


@dataclass
class ChaosConfig:
    users: int = 50
    webhooks: int = 10_000
    duplicate_share: float = 0.3
    service_processes: int = 2
    pg_restarts: int = 2
    kill_service: bool = True
    kill_listener: bool = True
    api_faults: bool = True
    revoke_one: bool = True
    # This share of the hosts receive Calendly's pre-2022 delivery shape (the event's URI only,
    # a boolean `canceled`): the worker reads what their deliveries lack (DR-47).
    legacy_share: float = 0.2
    seed: int = 7
    deadline_seconds: float = 420.0
    quiet: bool = False


@dataclass
class Report:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((name, ok, detail))

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)


# ------------------------------------------------------------------------ driver
class Chaos:
    def __init__(self, config: ChaosConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.rng = random.Random(config.seed)
        self.report = Report()
        # The service's secrets; the in-process sandbox registers its client with the same.
        self.made = new_secrets()
        self.jwt_secret = self.made["JWT_SECRET"]
        self.client = OAuthClient(
            client_id="chaos-client",
            client_secret=self.made["CALENDLY_OAUTH_CLIENT_SECRET"],
            redirect_uris=[],
            webhook_signing_key=self.made["CALENDLY_WEBHOOK_SIGNING_KEY"],
        )
        self.users: dict[str, str] = {}  # app user id -> sandbox user id
        self.legacy: set[str] = set()  # sandbox ids of the hosts sent the legacy shape

    def say(self, message: str) -> None:
        if not self.config.quiet:
            print(message, flush=True)

    def token(self, user: str) -> str:
        now = int(time.time())
        claims = {"sub": user, "aud": "authenticated", "iat": now, "exp": now + 3600}
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256")

    async def run(self) -> Report:
        cfg = self.config
        started = time.monotonic()
        logs = self.workdir / "logs"
        logs.mkdir()
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        stack = LocalStack(base, logs=logs)
        try:
            db_url = stack.start_postgres(self.workdir / "pg", "chaos")
            public = stack.listen()
            self.client.redirect_uris.append(f"{public}/oauth/calendly/callback")
            sandbox_settings = SandboxSettings(
                retry_base=60.0,
                retry_window=86_400.0,
                delivery_time_scale=1 / 60,
                delivery_read_timeout=10.0,
                rate_limit_paid=100_000,
            )
            # In-process: the traffic and the checks below work on the sandbox's own state.
            config = SandboxConfig(clients=[self.client], settings=sandbox_settings)
            async with serve(config) as sbx:
                stack.env.update(
                    service_environment(
                        database_url=db_url,
                        public_url=public,
                        client_id=self.client.client_id,
                        sandbox_url=sbx.url,
                        made=self.made,
                        LOG_LEVEL="WARNING",
                        LOG_FORMAT="json",
                        WORKER_POLL_MILLISECONDS="200",
                        # Time is compressed here as in the sandbox: back-offs of seconds.
                        WORKER_RETRY_BASE_MILLISECONDS="200",
                        WORKER_RETRY_MAX_SECONDS="2",
                        DB_POOL_MAX_SIZE="8",
                    )
                )
                try:
                    await asyncio.to_thread(stack.migrate)
                    stack.start_services(cfg.service_processes)
                    stack.start_worker()
                    await asyncio.to_thread(stack.wait_ready)
                    await self.drive(stack, db_url, sbx, public)
                finally:
                    # Off the event loop: stopping processes may still call the sandbox on it.
                    await asyncio.to_thread(stack.stop)
        finally:
            await asyncio.to_thread(stack.stop)
            if not self.report.ok and not cfg.quiet:
                for path in sorted(logs.glob("*.log")):
                    tail = path.read_text(errors="replace").splitlines()[-8:]
                    self.say(f"--- {path.name}\n" + "\n".join(tail))
        self.report.facts["seconds"] = round(time.monotonic() - started, 1)
        return self.report

    async def drive(self, stack: LocalStack, db_url: str, sbx: Any, public: str) -> None:
        """Connect every user, send the traffic under the faults, let it settle, verify."""
        cfg = self.config
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
            await self.connect_all(http, public, sbx.url)
            legacy = self.legacy_hosts(sbx.state)
            self.say(
                f"• {len(self.users)} users connected ({legacy} receive the legacy payload"
                f" shape); sending {cfg.webhooks} webhooks"
            )
            faults = asyncio.create_task(self.faults(stack, db_url, sbx.state))
            await self.traffic(sbx.state)
            await faults
            await self.quiesce(sbx.state)
            await self.details_read(db_url)
            await self.verify(sbx.state, db_url, http, public)

    def legacy_hosts(self, sandbox: Sandbox) -> int:
        """Every n-th host gets the legacy shape (never the one whose grant is revoked: its
        meetings could not be read after that, by design)."""
        users = sorted(self.users.items())[1:]
        every = max(1, round(1 / self.config.legacy_share)) if self.config.legacy_share else 0
        chosen = users[::every] if every else []
        for _, host_id in chosen:
            sandbox.world.change_user(
                sandbox.world.users[host_id], plan=None, role=None, payload_style="legacy"
            )
        self.legacy = {host_id for _, host_id in chosen}
        return len(chosen)

    async def connect_all(self, http: aiohttp.ClientSession, public: str, sandbox: str) -> None:
        slots = asyncio.Semaphore(8)

        async def one(n: int) -> None:
            user = f"user{n:03d}"
            async with slots:
                headers = {"Authorization": f"Bearer {self.token(user)}"}
                async with http.post(f"{public}/api/calendly/connect", headers=headers) as r:
                    started = await r.json()
                    binding = SimpleCookie(r.headers["Set-Cookie"])["cc_oauth_binding"].value
                url = f"{started['authorization_url']}&sandbox_login=host{n:03d}@example.com"
                async with http.get(url, allow_redirects=False) as r:
                    callback = r.headers["Location"]
                async with http.get(
                    callback,
                    headers={"Cookie": f"cc_oauth_binding={binding}", "Accept": "application/json"},
                ) as r:
                    body = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"connect failed for {user}: {body}")
                uri = body["connection"]["calendly_user_uri"]
                self.users[user] = uri.rsplit("/", 1)[1]

        await asyncio.gather(*(one(n) for n in range(self.config.users)))

    # ------------------------------------------------------------------- traffic
    async def traffic(self, sandbox: Sandbox) -> None:
        """Rounds of actions, each released shuffled, with duplicates redelivered."""
        cfg, world, deliverer = self.config, sandbox.world, sandbox.deliverer
        base_target = int(cfg.webhooks / (1 + cfg.duplicate_share))
        hosts = list(self.users.values())
        round_size = max(20, base_target // 25)
        released: list[asyncio.Task[None]] = []
        produced = 0
        t0 = time.time() + 86_400
        while produced < base_target:
            world.settings.hold_deliveries = True
            before = len(deliverer.held)
            while (
                len(deliverer.held) - before < round_size
                and produced + len(deliverer.held) - before < base_target
            ):
                notes = self.action(world, self.rng.choice(hosts), t0)
                if notes:
                    deliverer.enqueue(notes)
            batch = deliverer.held[before:]
            produced += len(batch)
            world.settings.hold_deliveries = False
            task = deliverer.release("shuffle", self.rng.randrange(1 << 30))
            if task is not None:
                released.append(task)
            for delivery in self.rng.sample(batch, int(len(batch) * cfg.duplicate_share)):
                released.append(deliverer.redeliver(delivery))
            await asyncio.sleep(0.2)  # rounds overlap, as real traffic does
        await asyncio.gather(*released, return_exceptions=True)

    def action(self, world: Any, host_id: str, t0: float) -> list[Any]:
        host = world.users[host_id]
        invitees = [
            i
            for i in world.invitees.values()
            if i.status == "active" and world.events[i.event_id].host_id == host_id
        ]
        roll = self.rng.random()
        if roll < 0.45 or not invitees:
            guests = [
                (f"Guest {self.rng.randrange(10**6)}", f"g{self.rng.randrange(10**9)}@example.org")
            ]
            if self.rng.random() < 0.1:
                guests.append(
                    (
                        f"Guest {self.rng.randrange(10**6)}",
                        f"g{self.rng.randrange(10**9)}@example.org",
                    )
                )
            _, notes = world.book(
                host,
                invitees=guests,
                start_time=t0 + self.rng.randrange(0, 30 * 86_400),
                duration_minutes=30,
                name="Chaos chat",
                location_type="zoom",
                invitee_limit=len(guests),
            )
            return list(notes)
        invitee = self.rng.choice(invitees)
        if roll < 0.60:
            return [world.cancel_invitee(invitee, self.rng.choice(["host", "invitee"]), "chaos")]
        if roll < 0.80:
            canceled, created = world.reschedule(
                invitee, t0 + self.rng.randrange(0, 30 * 86_400), None
            )
            return [canceled, created] if self.rng.random() < 0.5 else [created, canceled]
        if invitee.no_show is None:
            return [world.mark_no_show(invitee)]
        note, removed = world.unmark_no_show(invitee)
        return [(note, removed)]

    # -------------------------------------------------------------------- faults
    async def faults(self, stack: LocalStack, db_url: str, sandbox: Sandbox) -> None:
        cfg = self.config
        pg = stack.postgres
        assert pg is not None
        plan: list[tuple[str, Any]] = []
        for n in range(cfg.pg_restarts):
            plan.append((f"Postgres stopped hard and restarted ({n + 1})", self.restart_pg(pg)))
        if cfg.kill_service:
            plan.insert(1, ("a service process SIGKILLed and restarted", self.kill_one(stack)))
        if cfg.kill_listener:
            plan.insert(2, ("the listener's connection terminated", self.kill_listener(db_url)))
        if cfg.api_faults:
            plan.insert(2, ("Calendly answers a burst of 429 and 5xx", self.api_faults(sandbox)))
        if cfg.revoke_one:
            plan.append(("one user removes the app in Calendly", self.revoke(sandbox, db_url)))
        for name, step in plan:
            await asyncio.sleep(1.5)
            self.say(f"  ⚡ {name}")
            await step
            self.report.facts.setdefault("faults", []).append(name)

    async def restart_pg(self, pg: EmbeddedPostgres) -> None:
        await asyncio.to_thread(pg.stop_hard)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(pg.start)

    async def kill_one(self, stack: LocalStack) -> None:
        victim = stack.services[0]
        victim.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.wait)
        stack.forget(victim)
        await asyncio.sleep(0.5)
        stack.start_service()
        # Serving again before the next fault (and the launcher lets go of its socket).
        try:
            await asyncio.to_thread(stack.wait_ready)
        except RuntimeError as exc:
            self.report.check("the killed service process serves again", False, str(exc))

    async def kill_listener(self, db_url: str) -> None:
        def terminate() -> int:
            with psycopg.connect(db_url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
                ).fetchall()
            return len(rows)

        self.report.facts["listeners_killed"] = await asyncio.to_thread(terminate)

    async def api_faults(self, sandbox: Sandbox) -> None:
        from calendly_sandbox.limits import Fault

        sandbox.faults.add(Fault(route="*", status=429, count=15, reset_seconds=1))
        sandbox.faults.add(Fault(route="*", status=503, count=15))

    async def revoke(self, sandbox: Sandbox, db_url: str) -> None:
        user, host_id = sorted(self.users.items())[0]
        self.report.facts["revoked_user"] = user
        sandbox.world.revoke_all(host_id)

        def due_now() -> None:
            # Its token runs out and its daily grant check comes (DR-45): what a day without
            # a call would bring, now, so the run sees the worker find the grant gone.
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute(
                    "UPDATE calendar_connections SET token_expires_at = now() WHERE user_id = %s",
                    (user,),
                )
                conn.execute(
                    "UPDATE connection_maintenance SET grant_due = now() WHERE user_id = %s",
                    (user,),
                )

        await asyncio.to_thread(due_now)

    # ------------------------------------------------------------------- settle
    async def quiesce(self, sandbox: Sandbox) -> None:
        deadline = time.monotonic() + self.config.deadline_seconds
        while time.monotonic() < deadline:
            pending = [
                d for d in sandbox.deliverer.log if d.state in ("held", "sending", "retrying")
            ]
            if not pending:
                return
            await asyncio.sleep(0.25)
        self.report.check("every delivery settled in time", False, f"{len(pending)} still pending")

    async def details_read(self, db_url: str) -> None:
        """Wait until the worker has read every event a delivery lacked (bounded)."""

        def waiting() -> int:
            with psycopg.connect(db_url, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM meetings WHERE details_requested_at IS NOT NULL"
                ).fetchone()
            return int(row[0]) if row else 0

        started = time.monotonic()
        deadline = started + self.config.deadline_seconds
        left = await asyncio.to_thread(waiting)
        self.report.facts["details_waiting_when_settled"] = left
        while left and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            left = await asyncio.to_thread(waiting)
        self.report.facts["details_read_after_settling_s"] = round(time.monotonic() - started, 1)
        self.report.check(
            "every meeting a legacy delivery lacked details for read from Calendly",
            left == 0,
            f"{left} still waiting",
        )

    # ------------------------------------------------------------------- verify
    async def verify(
        self, sandbox: Sandbox, db_url: str, http: aiohttp.ClientSession, public: str
    ) -> None:
        world, log = sandbox.world, sandbox.deliverer.log
        owner_of = {host: user for user, host in self.users.items()}
        expected: dict[str, tuple[str, str, str, bool, str | None, str | None, bool]] = {}

        def other(invitee_id: str | None) -> str | None:
            return world.invitee_uri(world.invitees[invitee_id]) if invitee_id else None

        for invitee in world.invitees.values():
            event = world.events[invitee.event_id]
            user = owner_of.get(event.host_id)
            if user is None:
                continue
            expected[world.invitee_uri(invitee)] = (
                user,
                world.event_uri(event.id),
                invitee.status,
                invitee.rescheduled,
                other(invitee.old_invitee_id),
                other(invitee.new_invitee_id),
                invitee.no_show is not None,
            )
        # Each meeting's owner, status, title and start, as Calendly has them: a legacy
        # delivery carries none of the last three, so they come from the worker's reads.
        expected_meetings = {
            world.event_uri(e.id): (owner_of[e.host_id], e.status, e.name, int(e.start_time))
            for e in world.events.values()
            if e.host_id in owner_of
        }

        def read() -> tuple[list[Any], list[Any], list[Any], list[Any]]:
            with psycopg.connect(db_url, autocommit=True) as conn:
                invitees = conn.execute(
                    "SELECT i.invitee_uri, m.user_id, m.event_uri, i.status, i.rescheduled,"
                    " i.old_invitee_uri, i.new_invitee_uri, i.no_show"
                    " FROM meeting_invitees i JOIN meetings m ON m.id = i.meeting_id"
                ).fetchall()
                meetings = conn.execute(
                    "SELECT event_uri, user_id, status, name,"
                    " floor(extract(epoch FROM start_time))::bigint FROM meetings"
                ).fetchall()
                applied = conn.execute(
                    "SELECT event_id FROM calendly_webhook_events WHERE outcome = 'applied'"
                ).fetchall()
                aside = conn.execute(
                    "SELECT reason, count(*) FROM calendly_webhook_events"
                    " WHERE outcome <> 'applied' GROUP BY 1"
                ).fetchall()
            return invitees, meetings, applied, aside

        invitees, meetings, applied, aside = await asyncio.to_thread(read)
        stored = {row[0]: tuple(row[1:]) for row in invitees}
        lost = [uri for uri in expected if uri not in stored]
        wrong_user = [
            uri for uri, row in stored.items() if uri in expected and row[0] != expected[uri][0]
        ]
        stray = [uri for uri in stored if uri not in expected]
        wrong_state = [
            uri for uri, row in stored.items() if uri in expected and row != expected[uri]
        ]
        wrong_meetings = [row[0] for row in meetings if expected_meetings.get(row[0]) != row[1:]]
        keys = Counter(row[0] for row in applied)
        delivered_keys = {self.key_of(d) for d in log if d.state == "delivered"}
        r = self.report
        r.facts["deliveries_sent"] = len(log)
        r.facts["duplicates_sent"] = sum(1 for d in log if d.copy > 0)
        r.facts["invitees_expected"] = len(expected)
        r.facts["answered_5xx"] = sum(
            1 for d in log for a in d.attempts if a.status is not None and a.status >= 500
        )
        r.facts["connection_errors"] = sum(1 for d in log for a in d.attempts if a.error)
        r.facts["stored_aside"] = {str(k): v for k, v in aside}
        r.facts["legacy_shape_deliveries"] = sum(
            1 for d in log if b'"scheduled_event"' not in d.body
        )
        r.check("0 meetings lost", not lost, f"{len(lost)} missing")
        r.check(
            "0 effects applied twice",
            max(keys.values(), default=1) == 1 and len(applied) == len(delivered_keys),
            f"{len(applied)} applied for {len(delivered_keys)} distinct deliveries",
        )
        r.check(
            "0 meetings visible to the wrong user",
            not wrong_user and not stray,
            f"{len(wrong_user)} wrong, {len(stray)} stray",
        )
        r.check(
            "every invitee in its final state (status, links, no-show)",
            not wrong_state,
            f"{len(wrong_state)} differ"
            + (
                f", e.g. {stored[wrong_state[0]]} vs {expected[wrong_state[0]]}"
                if wrong_state
                else ""
            ),
        )
        r.check(
            "every meeting in its final state (owner, status, title, start)",
            not wrong_meetings,
            f"{len(wrong_meetings)} differ"
            + (
                f", e.g. {next(m[1:] for m in meetings if m[0] == wrong_meetings[0])}"
                f" vs {expected_meetings.get(wrong_meetings[0])}"
                if wrong_meetings
                else ""
            ),
        )
        revoked = r.facts.get("revoked_user")
        await self.wait_needs_reauth(db_url, revoked)

        def read_statuses() -> list[Any]:
            with psycopg.connect(db_url, autocommit=True) as conn:
                return conn.execute(
                    "SELECT user_id, status, webhook_status FROM calendar_connections"
                ).fetchall()

        statuses = await asyncio.to_thread(read_statuses)
        bad = [
            (u, s) for u, s, _ in statuses if s != ("needs_reauth" if u == revoked else "active")
        ]
        r.check(
            "every connection in the right status (the revoked one needs_reauth)",
            not bad,
            str(bad[:3]),
        )
        subs = [s for s in world.subscriptions.values() if s.user_id in owner_of]
        r.check(
            "every subscription active again",
            len(subs) == len(self.users) and all(s.state == "active" for s in subs),
            f"{sum(s.state == 'active' for s in subs)}/{len(self.users)} active",
        )
        leak = await self.cross_user_read(http, public, expected_meetings)
        r.check("no user reads another user's meetings through the API", not leak, leak)

    def key_of(self, delivery: Any) -> tuple[str, str, str]:
        import json

        body = json.loads(delivery.body)
        payload = body["payload"]
        marker = payload["uri"]
        if body["event"].startswith("invitee_no_show") and payload.get("no_show"):
            marker = payload["no_show"]["uri"]
        return (delivery.subscription_id, body["event"], marker)

    async def wait_needs_reauth(self, db_url: str, user: str | None) -> None:
        if user is None:
            return
        # The worker meets the injected 429/503 bursts first and backs off between tries
        # (compressed: at most 2 s each), so this can take a while; it ends once seen.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with psycopg.connect(db_url, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT status FROM calendar_connections WHERE user_id = %s", (user,)
                ).fetchone()
            if row and row[0] == "needs_reauth":
                return
            await asyncio.sleep(0.25)

    async def cross_user_read(
        self, http: aiohttp.ClientSession, public: str, expected: Mapping[str, tuple[Any, ...]]
    ) -> str:
        """Every meeting the API shows a user is one of theirs (first pages of a few users)."""
        for user in sorted(self.users)[:8]:
            headers = {"Authorization": f"Bearer {self.token(user)}"}
            for _ in range(20):  # a process whose database came back may answer 503 at first
                async with http.get(f"{public}/api/meetings?limit=200", headers=headers) as r:
                    status, text = r.status, await r.text()
                if status != 503:
                    break
                await asyncio.sleep(0.5)
            if status != 200:
                return f"{user}: HTTP {status} {text[:300]}"
            body = json.loads(text)
            foreign = [
                m for m in body["meetings"] if expected.get(m["event_uri"], ("",))[0] != user
            ]
            if foreign:
                return f"{user} sees {len(foreign)} meetings that are not theirs"
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--webhooks", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    config = ChaosConfig(users=args.users, webhooks=args.webhooks, seed=args.seed)
    print(f"chaos: {config.users} users, {config.webhooks} webhooks, seed {config.seed}")
    with tempfile.TemporaryDirectory(prefix="calendly-chaos-") as tmp:
        report = asyncio.run(Chaos(config, Path(tmp)).run())
    print()
    for name, ok, detail in report.checks:
        print(f"  {'✓' if ok else '✗'} {name}" + (f"  ({detail})" if detail and not ok else ""))
    print()
    for name, value in report.facts.items():
        print(f"  {name}: {value}")
    passed = sum(ok for _, ok, _ in report.checks)
    print(f"\n{passed} passed, {len(report.checks) - passed} failed")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
