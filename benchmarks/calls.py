"""Benchmark 3: Calendly calls per operation, from the sandbox's call log, and the database writes
of a reconnect with nothing changed (transaction ids assigned and WAL written meanwhile).

The browser's own visit to the consent page (`GET /oauth/authorize`) is not the service's call
and is left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from benchmarks.load import median
from benchmarks.stack import Stack, stack

BROWSER_ROUTES = frozenset({"GET /oauth/authorize"})
OPERATIONS = (
    "connect",
    "reconnect_unchanged",
    "reconnect_token_expired",
    "reconnect_token_rejected",
    "disconnect",
)


def write_marks(s: Stack) -> tuple[int, int]:
    """(next transaction id, WAL position): both move only when something is written."""
    row = s.sql(
        "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint,"
        " pg_current_wal_lsn() - '0/0'::pg_lsn"
    )[0]
    return int(row[0]), int(row[1])


class Probe:
    def __init__(self, s: Stack, http: aiohttp.ClientSession) -> None:
        self.s = s
        self.http = http

    async def calls(self) -> list[str]:
        async with self.http.get(f"{self.s.sandbox_url}/_sandbox/calls") as response:
            calls = (await response.json())["calls"]
        return [c["route"] for c in calls if c["route"] not in BROWSER_ROUTES]

    async def measure(self, action: Callable[[], Awaitable[None]]) -> dict[str, Any]:
        async with self.http.delete(f"{self.s.sandbox_url}/_sandbox/calls") as response:
            assert response.status == 204
        self.s.settle()
        xid, wal = write_marks(self.s)
        await action()
        self.s.settle()
        xid_after, wal_after = write_marks(self.s)
        routes = await self.calls()
        return {
            "calls": len(routes),
            "routes": routes,
            "write_transactions": xid_after - xid,
            "wal_bytes": wal_after - wal,
        }

    async def api(self, method: str, path: str, user_id: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.s.token_for(user_id)}"}
        async with self.http.request(method, f"{self.s.url}{path}", headers=headers) as response:
            body: dict[str, Any] = await response.json()
            assert response.status == 200, body
            return body

    async def sandbox(self, path: str) -> None:
        async with self.http.post(f"{self.s.sandbox_url}{path}") as response:
            assert response.status < 300, await response.text()


async def one_user(s: Stack, http: aiohttp.ClientSession, user_id: str) -> dict[str, Any]:
    probe = Probe(s, http)
    results: dict[str, Any] = {}
    problems: list[str] = []
    results["connect"] = await probe.measure(lambda: s.connect(http, user_id))
    sandbox_id = s.users([user_id], await sandbox_ids(s, http))[0].sandbox_user_id

    async def reconnect() -> None:
        body = await probe.api("POST", "/api/calendly/reconnect", user_id)
        if body["outcome"] != "reconnected":
            problems.append(f"reconnect answered {body['outcome']}")

    results["reconnect_unchanged"] = await probe.measure(reconnect)

    # The access token expired: at Calendly, and by the stored expiry too.
    await probe.sandbox(f"/_sandbox/users/{sandbox_id}/expire_tokens")
    s.sql(
        "UPDATE calendar_connections SET token_expires_at = now() - interval '1 minute'"
        " WHERE user_id = %s",
        (user_id,),
    )
    results["reconnect_token_expired"] = await probe.measure(reconnect)

    # Calendly rejects a token the service still believes valid (the 401 path).
    await probe.sandbox(f"/_sandbox/users/{sandbox_id}/expire_tokens")
    results["reconnect_token_rejected"] = await probe.measure(reconnect)

    async def disconnect() -> None:
        body = await probe.api("DELETE", "/api/calendly/connection", user_id)
        if body["connection"]["status"] != "disconnected" or not body["subscription_deleted"]:
            problems.append(f"disconnect answered {body}")

    results["disconnect"] = await probe.measure(disconnect)
    results["problems"] = problems
    return results


async def sandbox_ids(s: Stack, http: aiohttp.ClientSession) -> dict[str, str]:
    from benchmarks.stack import sandbox_user_ids

    return await sandbox_user_ids(http, s.sandbox_url)


async def measure(s: Stack, repeats: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        per_user = [await one_user(s, http, f"calls{n}") for n in range(repeats)]
    summary: dict[str, Any] = {}
    for op in OPERATIONS:
        items = [u[op] for u in per_user]
        summary[op] = {
            "calls": median([i["calls"] for i in items]),
            "write_transactions": median([i["write_transactions"] for i in items]),
            "wal_bytes": median([i["wal_bytes"] for i in items]),
            "routes": items[0]["routes"],
            "same_every_time": all(i["routes"] == items[0]["routes"] for i in items),
        }
    problems = [p for u in per_user for p in u["problems"]]
    summary["problems"] = problems
    summary["ok"] = not problems
    return summary


def run(repeats: int = 3, log: Any = print) -> dict[str, Any]:
    with stack("calls") as s:
        s.start_services(1)
        result = asyncio.run(measure(s, repeats))
    for op in OPERATIONS:
        r = result[op]
        log(
            f"  {op}: {r['calls']:.0f} Calendly calls ({', '.join(r['routes'])}); "
            f"{r['write_transactions']:.0f} write transactions"
        )
    return result
