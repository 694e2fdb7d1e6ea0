"""`make demo`: the main job, scripted and headless, with a readable verdict.

Starts the whole stack (`calendly-connect dev`, 2 service processes, a throwaway data folder),
then plays several users through it over HTTP exactly as their browsers and Calendly would:
connect through OAuth, bookings, duplicate and out-of-order deliveries, a cancel, a
reschedule, live updates, a reconnect and a disconnect. Exits 1 if any expectation fails.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp

from entrypoints.developer.launcher import CLI
from entrypoints.settings import process_environment

Check = tuple[str, bool, str]


@dataclass
class Demo:
    http: aiohttp.ClientSession
    url: str
    sandbox: str
    tokens: dict[str, str] = field(default_factory=dict)
    results: list[Check] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append((name, ok, detail))
        mark = "✓" if ok else "✗"
        print(f"  {mark} {name}" + (f"  ({detail})" if detail else ""), flush=True)
        return ok

    async def call(self, method: str, path: str, user: str | None = None, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}))
        if user is not None:
            headers["Authorization"] = f"Bearer {self.tokens[user]}"
        base = self.sandbox if path.startswith("/_sandbox") else self.url
        async with self.http.request(method, f"{base}{path}", headers=headers, **kw) as response:
            body = await response.json(content_type=None) if response.content_length != 0 else None
            if response.status >= 400:
                raise RuntimeError(f"{method} {path} answered {response.status}: {body}")
            return body

    async def sign_in(self, user: str) -> None:
        body = await self.call("POST", "/api/dev/login", json={"user_id": user})
        self.tokens[user] = body.get("access_token") or body["token"]

    async def connect(self, user: str, email: str, plan: str = "standard") -> dict[str, Any]:
        """The popup round trip: start, approve at the (sandbox) consent page, come back."""
        async with self.http.post(
            f"{self.url}/api/calendly/connect",
            headers={"Authorization": f"Bearer {self.tokens[user]}"},
        ) as response:
            started = await response.json()
            binding = SimpleCookie(response.headers["Set-Cookie"])["cc_oauth_binding"].value
        approve = f"{started['authorization_url']}&sandbox_login={email}&sandbox_plan={plan}"
        async with self.http.get(approve, allow_redirects=False) as response:
            callback = response.headers["Location"]
        async with self.http.get(
            callback,
            headers={"Cookie": f"cc_oauth_binding={binding}", "Accept": "application/json"},
        ) as response:
            body = await response.json()
        connection: dict[str, Any] = body["connection"]
        return connection

    async def meetings(self, user: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await self.call("GET", "/api/meetings", user))["meetings"]
        return found

    async def host_id(self, email: str) -> str:
        users = (await self.call("GET", "/_sandbox/users"))["users"]
        return str(next(u["id"] for u in users if u["email"] == email))


async def scenario(demo: Demo) -> None:
    print("\nUsers sign in and connect their own Calendly accounts", flush=True)
    for user in ("alice", "bob", "carol"):
        await demo.sign_in(user)
    alice = await demo.connect("alice", "ada@example.com")
    bob = await demo.connect("bob", "bo@example.com")
    carol = await demo.connect("carol", "cy@example.com", plan="free")
    demo.check(
        "alice connected, Calendly user URI recorded, webhook active",
        alice["status"] == "active"
        and bool(alice["calendly_user_uri"])
        and alice["webhook_status"] == "active",
    )
    demo.check("bob connected", bob["status"] == "active" and bob["webhook_status"] == "active")
    demo.check(
        "carol (free plan) connected with webhooks marked unavailable",
        carol["status"] == "active" and carol["webhook_status"] == "unavailable_plan",
    )
    try:
        await demo.connect("bob", "ada@example.com")
        demo.check("alice's Calendly account cannot be attached to bob", False)
    except (KeyError, RuntimeError, aiohttp.ClientError):
        demo.check("alice's Calendly account cannot be attached to bob", True, "409")

    print("\nBookings arrive as signed webhooks, live, for their owner only", flush=True)
    ada, bo = await demo.host_id("ada@example.com"), await demo.host_id("bo@example.com")
    live = await demo.http.get(
        f"{demo.url}/api/live", headers={"Authorization": f"Bearer {demo.tokens['alice']}"}
    )
    started = time.monotonic()
    booked = await demo.call(
        "POST",
        f"/_sandbox/users/{ada}/bookings",
        json={
            "start_time": "2031-05-05T14:30:00Z",
            "invitees": [{"name": "Grace Guest", "email": "grace@example.org"}],
            "wait": True,
        },
    )
    seen_live = await read_until(live, "event: meetings", 5.0)
    demo.check(
        "the booking reached alice's open page without a reload",
        seen_live,
        f"{(time.monotonic() - started) * 1000:.0f} ms after booking",
    )
    live.close()
    await demo.call(
        "POST",
        f"/_sandbox/users/{bo}/bookings",
        json={
            "start_time": "2031-05-06T09:00:00Z",
            "invitees": [{"name": "Hal Guest", "email": "hal@example.org"}],
            "wait": True,
        },
    )
    mine, bobs = await demo.meetings("alice"), await demo.meetings("bob")
    demo.check(
        "alice sees exactly her meeting",
        [m["event_uri"] for m in mine] == [booked["event"]["uri"]],
    )
    demo.check(
        "bob sees only his own", len(bobs) == 1 and bobs[0]["event_uri"] != mine[0]["event_uri"]
    )
    carols = await demo.meetings("carol")
    demo.check("carol sees nothing of theirs", carols == [])

    print("\nCalendly's retries and duplicates take effect once", flush=True)
    await demo.call("PATCH", "/_sandbox/settings", json={"duplicate_deliveries": 2})
    dup = await demo.call(
        "POST",
        f"/_sandbox/users/{ada}/bookings",
        json={
            "start_time": "2031-05-07T10:00:00Z",
            "invitees": [{"name": "Ivy Guest", "email": "ivy@example.org"}],
            "wait": True,
        },
    )
    await demo.call("PATCH", "/_sandbox/settings", json={"duplicate_deliveries": 0})
    statuses = [d["attempts"][-1]["status"] for d in dup["deliveries"]]
    dup_meeting = [m for m in await demo.meetings("alice") if m["event_uri"] == dup["event"]["uri"]]
    demo.check(
        "three copies of one delivery: all acknowledged, one meeting, one invitee",
        statuses == [200, 200, 200]
        and len(dup_meeting) == 1
        and len(dup_meeting[0]["invitees"]) == 1,
        f"answers {statuses}",
    )

    print("\nA cancel, and a reschedule whose two deliveries arrive in reverse", flush=True)
    invitee = dup["invitees"][0]["uri"].rsplit("/", 1)[1]
    await demo.call(
        "POST",
        f"/_sandbox/invitees/{invitee}/cancel",
        json={"canceler_type": "invitee", "reason": "Sick", "wait": True},
    )
    canceled = [m for m in await demo.meetings("alice") if m["event_uri"] == dup["event"]["uri"]]
    demo.check("the canceled meeting shows as canceled", canceled[0]["status"] == "canceled")
    await demo.call("PATCH", "/_sandbox/settings", json={"hold_deliveries": True})
    first = booked["invitees"][0]["uri"].rsplit("/", 1)[1]
    moved = await demo.call(
        "POST",
        f"/_sandbox/invitees/{first}/reschedule",
        json={"start_time": "2031-05-08T16:00:00Z", "order": "canceled_first"},
    )
    await demo.call("PATCH", "/_sandbox/settings", json={"hold_deliveries": False})
    await demo.call("POST", "/_sandbox/deliveries/release", json={"order": "reverse", "wait": True})
    listed = {m["event_uri"]: m for m in await demo.meetings("alice")}
    old, new = listed.get(booked["event"]["uri"]), listed.get(moved["event"]["uri"])
    demo.check(
        "old time canceled, new time active, the two linked",
        old is not None
        and new is not None
        and old["status"] == "canceled"
        and new["status"] == "active"
        and old["invitees"][0]["new_invitee_uri"] == moved["new_invitee"]["uri"]
        and new["invitees"][0]["old_invitee_uri"] == booked["invitees"][0]["uri"],
    )

    print("\nReconnect and disconnect", flush=True)
    await demo.call("DELETE", "/_sandbox/calls")
    again = await demo.call("POST", "/api/calendly/reconnect", "alice")
    calls = [c["route"] for c in (await demo.call("GET", "/_sandbox/calls"))["calls"]]
    writes = [c for c in calls if c.startswith(("POST /webhook", "DELETE /webhook"))]
    demo.check(
        "reconnect with nothing changed: no OAuth, no writes at Calendly",
        again["outcome"] == "reconnected" and not writes,
        f"{len(calls)} Calendly calls",
    )
    gone = await demo.call("DELETE", "/api/calendly/connection", "bob")
    subs = (await demo.call("GET", "/_sandbox/subscriptions"))["subscriptions"]
    demo.check(
        "bob disconnected: subscription deleted at Calendly, token revoked, history kept",
        gone["connection"]["status"] == "disconnected"
        and gone["subscription_deleted"]
        and not gone["revoke_failed"]
        and all(s["user"] != bob["calendly_user_uri"] for s in subs)
        and len(await demo.meetings("bob")) == 1,
    )
    again = await demo.call("DELETE", "/api/calendly/connection", "bob")
    demo.check("a second disconnect answers the same", again["already_disconnected"] is True)


async def read_until(response: aiohttp.ClientResponse, marker: str, seconds: float) -> bool:
    async def read() -> bool:
        while True:
            line = await response.content.readline()
            if not line:
                return False
            if line.decode().strip() == marker:
                return True

    try:
        return await asyncio.wait_for(read(), seconds)
    except TimeoutError:
        return False


def start_stack(data_dir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """`calendly-connect dev` with its own Postgres and sandbox, whatever this shell configures."""
    env = {
        name: value
        for name, value in process_environment().items()
        if not name.startswith(("CALENDLY_", "DATABASE_"))
    }
    env["LOG_LEVEL"] = "WARNING"
    proc = subprocess.Popen(  # noqa: S603 - our own CLI, fixed argv
        [
            *CLI,
            "dev",
            "--port",
            "0",
            "--sandbox-port",
            "0",
            "--workers",
            "2",
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            break
        if line.startswith("READY "):
            fields = dict(part.split("=", 1) for part in line.split()[1:])
            return proc, fields["url"], fields["sandbox"]
    proc.kill()
    raise RuntimeError("the stack did not start")


def main() -> int:
    print("calendly-connect demo: starting Postgres, the sandbox and 2 service processes…")
    with tempfile.TemporaryDirectory(prefix="calendly-demo-") as tmp:
        proc, url, sandbox = start_stack(Path(tmp))
        try:

            async def play() -> list[Check]:
                async with aiohttp.ClientSession() as http:
                    demo = Demo(http=http, url=url, sandbox=sandbox)
                    try:
                        await scenario(demo)
                    except (RuntimeError, KeyError, aiohttp.ClientError) as exc:
                        demo.check("the scenario ran to the end", False, str(exc))
                    return demo.results

            results = asyncio.run(play())
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    passed = sum(ok for _, ok, _ in results)
    failed = len(results) - passed
    print(f"\n{passed} passed, {failed} failed")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    raise SystemExit(main())
