"""The use cases on real adapters: Postgres, and the Calendly sandbox over HTTP."""

from __future__ import annotations

import asyncio
import base64
import sys
from datetime import UTC, datetime, timedelta

from domain.errors import AuthorizationStateInvalid
from domain.model import ConnectionStatus, WebhookStatus
from domain.usecases.complete_connect import CompleteConnectCommand
from domain.usecases.disconnect import DisconnectCommand
from domain.usecases.reconnect import ReconnectCommand
from domain.usecases.start_connect import StartConnectCommand
from tests.support.real_core import RealCore, owner_sql, subscriptions
from tests.support.sandbox import query_of


async def test_connect_stores_the_user_uri_and_one_subscription(real: RealCore) -> None:
    await real.connect("app-user", "ada@example.com")
    rows = owner_sql(
        real,
        "SELECT calendly_user_uri, status, webhook_status, access_token_enc"
        " FROM calendar_connections",
    )
    ((uri, status, webhook, sealed),) = rows
    assert str(uri).startswith(real.sandbox.url + "/users/")
    assert (status, webhook) == ("active", "active")
    assert isinstance(sealed, bytes)
    assert b"sbx_at_" not in sealed  # encrypted at rest
    subs = await subscriptions(real)
    assert len(subs) == 1
    assert subs[0]["user"] == uri
    assert subs[0]["has_signing_key"] is True


async def test_reconnect_with_nothing_changed_makes_two_reads(real: RealCore) -> None:
    await real.connect("app-user", "ada@example.com")
    await real.sandbox.control("DELETE", "/_sandbox/calls", expect=204)
    result = await real.reconnect(ReconnectCommand(user_id="app-user"))
    assert result.outcome == "reconnected"
    routes = [c["route"] for c in await real.sandbox.calls()]
    assert routes == ["GET /users/me", "GET /webhook_subscriptions"]


async def test_concurrent_reconnects_leave_exactly_one_subscription(real: RealCore) -> None:
    await real.connect("app-user", "ada@example.com")
    (sub,) = await subscriptions(real)
    sub_id = str(sub["uri"]).rsplit("/", 1)[1]
    await real.sandbox.control("POST", f"/_sandbox/subscriptions/{sub_id}/disable", expect=200)
    results = await asyncio.gather(
        *(real.reconnect(ReconnectCommand(user_id="app-user")) for _ in range(5))
    )
    assert {r.outcome for r in results} == {"reconnected"}
    subs = await subscriptions(real)
    assert [s["state"] for s in subs] == ["active"]
    stored = owner_sql(real, "SELECT webhook_subscription_uri FROM calendar_connections")
    assert stored == [(subs[0]["uri"],)]


async def test_a_double_callback_connects_once(real: RealCore) -> None:
    started = await real.start(StartConnectCommand(user_id="app-user"))
    params = query_of(started.authorization_url)
    response = await real.sandbox.authorize(
        state=params["state"],
        code_challenge=params["code_challenge"],
        code_challenge_method="S256",
        sandbox_login="ada@example.com",
    )
    code = query_of(response.headers["Location"])["code"]
    command = CompleteConnectCommand(state=started.state, code=code, user_id="app-user")
    results = await asyncio.gather(
        real.complete(command), real.complete(command), return_exceptions=True
    )
    assert sum(isinstance(r, AuthorizationStateInvalid) for r in results) == 1
    token_calls = await real.sandbox.calls("POST /oauth/token")
    assert len(token_calls) == 1
    assert len(await subscriptions(real)) == 1


async def test_disconnect_cleans_up_at_calendly_and_here(real: RealCore) -> None:
    await real.connect("app-user", "ada@example.com")
    result = await real.disconnect(DisconnectCommand(user_id="app-user"))
    assert result.subscription_deleted
    assert not result.revoke_failed
    assert await subscriptions(real) == []
    rows = owner_sql(
        real,
        "SELECT status, access_token_enc, refresh_token_enc, webhook_signing_key_enc"
        " FROM calendar_connections",
    )
    assert rows == [("disconnected", None, None, None)]
    assert owner_sql(real, "SELECT count(*) FROM calendly_webhook_routes") == [(0,)]


async def test_a_revoked_app_turns_needs_reauth_on_reconnect(real: RealCore) -> None:
    await real.connect("app-user", "ada@example.com")
    (user,) = (await real.sandbox.control("GET", "/_sandbox/users", expect=200))["users"]
    await real.sandbox.control("POST", f"/_sandbox/users/{user['id']}/revoke_app", expect=200)
    result = await real.reconnect(ReconnectCommand(user_id="app-user"))
    assert result.outcome == "authorization_required"
    assert result.authorization_url is not None
    assert result.authorization_url.startswith(real.sandbox.url + "/oauth/authorize?")
    assert owner_sql(real, "SELECT status FROM calendar_connections") == [("needs_reauth",)]


async def test_a_free_plan_is_connected_without_webhooks(real: RealCore) -> None:
    started = await real.start(StartConnectCommand(user_id="free-user"))
    params = query_of(started.authorization_url)
    response = await real.sandbox.authorize(
        state=params["state"],
        code_challenge=params["code_challenge"],
        code_challenge_method="S256",
        sandbox_login="fred@example.com",
        sandbox_plan="free",
    )
    code = query_of(response.headers["Location"])["code"]
    result = await real.complete(
        CompleteConnectCommand(state=started.state, code=code, user_id="free-user")
    )
    assert result.connection.status is ConnectionStatus.ACTIVE
    assert result.connection.webhook_status is WebhookStatus.UNAVAILABLE_PLAN


async def test_two_processes_refreshing_at_once_call_the_token_endpoint_once(
    real: RealCore,
) -> None:
    await real.connect("app-user", "ada@example.com")
    (user,) = (await real.sandbox.control("GET", "/_sandbox/users", expect=200))["users"]
    await real.sandbox.control("POST", f"/_sandbox/users/{user['id']}/expire_tokens", expect=200)
    owner_sql(
        real,
        "UPDATE calendar_connections SET token_expires_at = %s",
        datetime.now(tz=UTC) - timedelta(seconds=1),
    )
    await real.sandbox.control("DELETE", "/_sandbox/calls", expect=204)
    args = [
        real.database_url,
        real.sandbox.url,
        real.sandbox.client.client_id,
        real.sandbox.client.client_secret,
        "app-user",
        base64.urlsafe_b64encode(real.key).decode(),
    ]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.refresh_worker",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line.strip() == b"ready", line
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")  # both refresh at the same moment
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    digests = {out.strip() for out, _ in outputs}
    assert len(digests) == 1  # both ended with the same, fresh token
    assert len(await real.sandbox.calls("POST /oauth/token")) == 1


async def test_a_failed_revoke_still_wipes_the_secrets(real: RealCore) -> None:
    await real.connect("app-user", "ada@example.com")
    await real.sandbox.fault("POST /oauth/revoke", status=500, count=10)
    result = await real.disconnect(DisconnectCommand(user_id="app-user"))
    assert result.revoke_failed
    assert result.subscription_deleted
    assert await subscriptions(real) == []
    rows = owner_sql(
        real, "SELECT status, access_token_enc, refresh_token_enc FROM calendar_connections"
    )
    assert rows == [("disconnected", None, None)]
