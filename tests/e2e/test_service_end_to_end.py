"""The whole service over real HTTP: container, Postgres, uvicorn, and the Calendly sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support import journeys
from tests.support.sandbox import SandboxDriver, query_of
from tests.support.service import RunningService, running_service


@pytest.fixture
async def service(sandbox: SandboxDriver, database_url: str) -> AsyncIterator[RunningService]:
    async with running_service(database_url, sandbox.url) as running:
        yield running


async def api(
    http: aiohttp.ClientSession,
    service: RunningService,
    method: str,
    path: str,
    user: str,
    **kw: Any,
) -> tuple[int, Any]:
    async with http.request(
        method, f"{service.url}{path}", headers=service.auth(user), **kw
    ) as response:
        return response.status, await response.json(content_type=None)


async def connect(
    http: aiohttp.ClientSession, service: RunningService, user: str, email: str
) -> dict[str, Any]:
    """What the popup does (tests/support/journeys.py): the connection it ends with."""
    return (await journeys.connect(http, service, user, email)).connection


async def sandbox_user_id(sandbox: SandboxDriver, email: str) -> str:
    users = (await sandbox.control("GET", "/_sandbox/users", expect=200))["users"]
    return str(next(u["id"] for u in users if u["email"] == email))


async def meetings(
    http: aiohttp.ClientSession, service: RunningService, user: str
) -> list[dict[str, Any]]:
    status, body = await api(http, service, "GET", "/api/meetings", user)
    assert status == 200, body
    found: list[dict[str, Any]] = body["meetings"]
    return found


async def test_connect_book_cancel_reschedule_reconnect_disconnect(
    sandbox: SandboxDriver, service: RunningService, http: aiohttp.ClientSession
) -> None:
    connection = await connect(http, service, "alice", "ada@example.com")
    assert connection["status"] == "active"
    assert connection["webhook_status"] == "active"
    assert connection["email"] == "ada@example.com"
    assert connection["calendly_user_uri"].startswith(sandbox.url + "/users/")
    await connect(http, service, "bob", "bo@example.com")

    # A booking arrives as a signed webhook and becomes alice's meeting, nobody else's.
    ada = await sandbox_user_id(sandbox, "ada@example.com")
    booked = await sandbox.book(ada, wait=True)
    assert [d["attempts"][-1]["status"] for d in booked["deliveries"]] == [200]
    (meeting,) = await meetings(http, service, "alice")
    assert meeting["event_uri"] == booked["event"]["uri"]
    assert meeting["status"] == "active"
    assert await meetings(http, service, "bob") == []

    # Calendly retries the same delivery: no second effect.
    delivery_id = booked["deliveries"][0]["id"]
    again = await sandbox.control(
        "POST", f"/_sandbox/deliveries/{delivery_id}/redeliver", {"wait": True}, expect=201
    )
    assert again["attempts"][-1]["status"] == 200
    (meeting,) = await meetings(http, service, "alice")
    assert len(meeting["invitees"]) == 1

    # Reschedule with the pair arriving created-first, then the old one is canceled.
    invitee_id = booked["invitees"][0]["uri"].rsplit("/", 1)[1]
    moved = await sandbox.control(
        "POST",
        f"/_sandbox/invitees/{invitee_id}/reschedule",
        {"start_time": "2030-03-06T09:00:00Z", "order": "created_first", "wait": True},
        expect=201,
    )
    listed = {m["event_uri"]: m for m in await meetings(http, service, "alice")}
    old, new = listed[booked["event"]["uri"]], listed[moved["event"]["uri"]]
    assert old["status"] == "canceled"
    assert new["status"] == "active"
    assert old["invitees"][0]["rescheduled"] is True
    assert old["invitees"][0]["new_invitee_uri"] == moved["new_invitee"]["uri"]
    assert new["invitees"][0]["old_invitee_uri"] == booked["invitees"][0]["uri"]

    # Reconnect with nothing changed: no writes at Calendly.
    await sandbox.control("DELETE", "/_sandbox/calls", expect=204)
    status, body = await api(http, service, "POST", "/api/calendly/reconnect", "alice")
    assert status == 200, body
    assert body["outcome"] == "reconnected"
    routes = [c["route"] for c in await sandbox.calls()]
    assert not [r for r in routes if r.startswith(("POST /webhook", "DELETE /webhook"))]

    # Disconnect: the subscription is gone at Calendly, history stays, bob is untouched.
    status, body = await api(http, service, "DELETE", "/api/calendly/connection", "alice")
    assert status == 200, body
    assert body["connection"]["status"] == "disconnected"
    subs = (await sandbox.control("GET", "/_sandbox/subscriptions", expect=200))["subscriptions"]
    assert [s["user"] for s in subs] == [
        (await api(http, service, "GET", "/api/calendly/connection", "bob"))[1]["calendly_user_uri"]
    ]
    assert len(await meetings(http, service, "alice")) == 2


async def test_a_forged_delivery_is_refused_and_leaves_no_trace(
    sandbox: SandboxDriver, service: RunningService, http: aiohttp.ClientSession
) -> None:
    await connect(http, service, "alice", "ada@example.com")
    body = b'{"event": "invitee.created", "payload": {}}'
    async with http.post(
        f"{service.url}/webhooks/calendly",
        data=body,
        headers={
            "Content-Type": "application/json",
            "Calendly-Webhook-Signature": "t=1,v1=" + "0" * 64,
        },
    ) as response:
        assert response.status == 401
    assert await meetings(http, service, "alice") == []


async def test_the_callback_from_another_browser_is_refused_before_calendly(
    sandbox: SandboxDriver, service: RunningService, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{service.url}/api/calendly/connect", headers=service.auth("alice")
    ) as response:
        started = await response.json()
    state = query_of(started["authorization_url"])["state"]
    await sandbox.control("DELETE", "/_sandbox/calls", expect=204)
    async with http.get(
        f"{service.url}/oauth/calendly/callback?code=stolen&state={state}",
        headers={"Cookie": "cc_oauth_binding=someone-elses", "Accept": "application/json"},
    ) as response:
        assert response.status == 400
    assert await sandbox.calls("POST /oauth/token") == []


def owner_rows(service: RunningService, query: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(service.settings.database.url.reveal()) as conn:
        return conn.execute(query.encode()).fetchall()


async def test_fifty_concurrent_copies_of_a_delivery_take_effect_once(
    sandbox: SandboxDriver, service: RunningService, http: aiohttp.ClientSession
) -> None:
    import asyncio

    from tests.support.deliveries import envelope, invitee_payload, sign

    connection = await connect(http, service, "alice", "ada@example.com")
    host = connection["calendly_user_uri"]
    payload = invitee_payload(host_uri=host, event_id="e-concurrent", invitee_id="i1")
    body = envelope("invitee.created", payload, host)

    async def post() -> int:
        headers = {
            "Content-Type": "application/json",
            "Calendly-Webhook-Signature": sign(body, service.signing_key),
        }
        async with http.post(
            f"{service.url}/webhooks/calendly", data=body, headers=headers
        ) as response:
            return response.status

    statuses = await asyncio.gather(*(post() for _ in range(50)))
    assert set(statuses) == {200}
    assert owner_rows(service, "SELECT count(*) FROM calendly_webhook_events") == [(1,)]
    assert owner_rows(service, "SELECT count(*) FROM meeting_invitees") == [(1,)]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{definitely not json", "envelope"),
        (b'{"event": "invitee.created", "created_by": "x", "payload": {"uri": 1}}', "payload"),
        (b'{"event": "routing_form_submission.created", "payload": {}}', "no connected user"),
    ],
)
async def test_signed_but_unusable_deliveries_are_acknowledged_and_kept(
    service: RunningService, http: aiohttp.ClientSession, body: bytes, reason: str
) -> None:
    from tests.support.deliveries import sign

    headers = {
        "Content-Type": "application/json",
        "Calendly-Webhook-Signature": sign(body, service.signing_key),
    }
    async with http.post(f"{service.url}/webhooks/calendly", data=body, headers=headers) as r:
        assert r.status == 200
        assert (await r.json())["outcome"] == "stored_aside"
    ((outcome, stored_reason),) = owner_rows(
        service, "SELECT outcome, reason FROM calendly_webhook_events"
    )
    assert outcome == "unusable"
    assert reason in stored_reason


async def test_live_updates_arrive_resume_and_survive_a_lost_listener(
    sandbox: SandboxDriver, service: RunningService, http: aiohttp.ClientSession
) -> None:
    from tests.support.sse import EventReader

    await connect(http, service, "alice", "ada@example.com")
    await connect(http, service, "bob", "bo@example.com")
    ada = await sandbox_user_id(sandbox, "ada@example.com")
    bo = await sandbox_user_id(sandbox, "bo@example.com")
    async with http.get(f"{service.url}/api/live", headers=service.auth("alice")) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        events = EventReader(stream)
        ready = await events.next()
        assert ready.event == "ready"
        assert (await events.next()).event == "connection"

        await sandbox.book(bo, wait=True)  # bob's booking rings nothing on alice's stream
        booked = await sandbox.book(ada, wait=True)
        update = await events.until("meetings")
        (meeting,) = update.json()["meetings"]
        assert meeting["event_uri"] == booked["event"]["uri"]
        seen = update.id
        assert seen is not None

        # The listener's database connection dies; changes meanwhile are not lost.
        with __import__("psycopg").connect(
            service.settings.database.url.reveal(), autocommit=True
        ) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN %%' AND pid <> pg_backend_pid()"
            )
        second = await sandbox.book(ada, start_time="2030-04-01T10:00:00Z", wait=True)
        update = await events.until("meetings", seconds=15)
        uris = [m["event_uri"] for m in update.json()["meetings"]]
        assert second["event"]["uri"] in uris

    # A page that dropped resumes after the last id it saw and gets what it missed.
    headers = {**service.auth("alice"), "Last-Event-ID": seen}
    async with http.get(f"{service.url}/api/live", headers=headers) as stream:
        events = EventReader(stream)
        assert (await events.next()).event == "ready"
        update = await events.until("meetings")
        assert [m["event_uri"] for m in update.json()["meetings"]] == [second["event"]["uri"]]
