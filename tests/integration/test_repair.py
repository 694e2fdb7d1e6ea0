"""`repair-connections`: rows inherited without a Calendly user URI get one, and webhooks."""

from __future__ import annotations

import asyncio
import base64
import os
import sys

import aiohttp

from adapters.calendly import AiohttpCalendlyApi
from adapters.system import SecretsRandomness, SystemClock
from domain.secret import Secret
from domain.usecases.ensure_subscription import EnsureSubscription
from domain.usecases.repair_connection import RepairConnection
from tests.support.real_core import CALLBACK_BASE, RealCore, owner_sql, subscriptions


def strip_account(core: RealCore) -> None:
    """What the seed's stuck rows look like: tokens, but no Calendly user URI."""
    owner_sql(
        core,
        "UPDATE calendar_connections SET calendly_user_uri = NULL,"
        " calendly_organization_uri = NULL, webhook_status = 'missing',"
        " webhook_subscription_uri = NULL, webhook_signing_key_enc = NULL",
    )


async def repair_use_case(core: RealCore, session: aiohttp.ClientSession) -> RepairConnection:
    calendly = AiohttpCalendlyApi(
        session,
        client_id=core.sandbox.client.client_id,
        client_secret=Secret(core.sandbox.client.client_secret),
        auth_base_url=core.sandbox.url,
        api_base_url=core.sandbox.url,
    )
    clock, random = SystemClock(), SecretsRandomness()
    uow = core.uow
    ensure = EnsureSubscription(uow, calendly, core.tokens, clock, random, CALLBACK_BASE)  # type: ignore[arg-type]
    return RepairConnection(uow, calendly, core.tokens, ensure, clock)  # type: ignore[arg-type]


async def test_a_connection_without_its_uri_is_repaired_once(real: RealCore) -> None:
    await real.connect("stuck-user", "ada@example.com")
    strip_account(real)
    async with aiohttp.ClientSession() as session:
        repair = await repair_use_case(real, session)
        assert await repair.candidates() == ["stuck-user"]
        dry = await repair("stuck-user", dry_run=True)
        assert dry.action == "would_repair"
        assert owner_sql(real, "SELECT calendly_user_uri FROM calendar_connections") == [(None,)]
        done = await repair("stuck-user")
        again = await repair("stuck-user")
    assert done.action == "repaired"
    assert again.action == "already_fine"
    ((uri, webhook),) = owner_sql(
        real, "SELECT calendly_user_uri, webhook_status FROM calendar_connections"
    )
    assert str(uri).startswith(real.sandbox.url + "/users/")
    assert webhook == "active"
    assert [s["state"] for s in await subscriptions(real)] == ["active"]


async def test_a_dead_grant_turns_needs_reauth(real: RealCore) -> None:
    await real.connect("stuck-user", "ada@example.com")
    strip_account(real)
    (user,) = (await real.sandbox.control("GET", "/_sandbox/users", expect=200))["users"]
    await real.sandbox.control("POST", f"/_sandbox/users/{user['id']}/revoke_app", expect=200)
    async with aiohttp.ClientSession() as session:
        repair = await repair_use_case(real, session)
        result = await repair("stuck-user")
    assert result.action == "needs_reauth"
    assert owner_sql(real, "SELECT status FROM calendar_connections") == [("needs_reauth",)]


def command_env(core: RealCore) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": core.database_url,
        "CALENDLY_OAUTH_CLIENT_ID": core.sandbox.client.client_id,
        "CALENDLY_OAUTH_CLIENT_SECRET": core.sandbox.client.client_secret,
        "CALENDLY_WEBHOOK_SIGNING_KEY": "app-key-not-used-here",
        "CALENDLY_AUTH_BASE_URL": core.sandbox.url,
        "CALENDLY_API_BASE_URL": core.sandbox.url,
        "PUBLIC_BASE_URL": "http://127.0.0.1:9",
        "CALENDLY_WEBHOOK_CALLBACK_BASE": CALLBACK_BASE,
        "TOKEN_ENCRYPTION_KEY": "k1:" + base64.urlsafe_b64encode(core.key).decode(),
        "JWT_SECRET": "j" * 40,
    }


async def run_repair(core: RealCore, *args: str) -> tuple[int, str]:
    """`calendly-connect repair-connections` in a child process: exit code and output."""
    # Asynchronously: the sandbox answers from this test's own event loop.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "entrypoints.cli",
        "repair-connections",
        *args,
        env=command_env(core),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_the_command_reports_and_repairs(real: RealCore) -> None:
    await real.connect("stuck-user", "ada@example.com")
    strip_account(real)

    code, out = await run_repair(real, "--dry-run")
    assert code == 0, out
    assert "stuck-user: would_repair" in out
    code, out = await run_repair(real)
    assert code == 0, out
    assert "stuck-user: repaired" in out
    code, out = await run_repair(real)
    assert "nothing to repair" in out


async def test_an_account_conflict_is_reported_and_later_rows_are_still_repaired(
    real: RealCore,
) -> None:
    # Two legacy rows; then another user connects the first row's Calendly account, so
    # recording that account on the legacy row would break "one app user per account".
    await real.connect("a-legacy", "ada@example.com")
    await real.connect("c-legacy", "carol@example.com")
    strip_account(real)
    await real.connect("b-owner", "ada@example.com")

    code, out = await run_repair(real)

    assert code == 1, out
    assert "Traceback" not in out
    assert "uncaught exception" not in out
    [line] = [line for line in out.splitlines() if line.startswith("a-legacy:")]
    assert line.startswith("a-legacy: conflict (")
    assert "already connected to app user 'b-owner'" in line
    assert "disconnect" in line
    assert "c-legacy: repaired" in out
    assert "2 connection(s) without a Calendly user URI: conflict 1, repaired 1" in out
    rows = owner_sql(
        real, "SELECT user_id, calendly_user_uri IS NOT NULL FROM calendar_connections"
    )
    assert sorted(rows) == [("a-legacy", False), ("b-owner", True), ("c-legacy", True)]
