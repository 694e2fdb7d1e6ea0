"""`calendly-connect api-keys` against real Postgres and the real service over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import aiohttp

from tests.support.cli import run_cli
from tests.support.sandbox import SandboxDriver
from tests.support.service import RunningService, running_service
from tests.support.sse import EventReader

ROOT = Path(__file__).resolve().parents[2]


async def api_keys(database_url: str, *argv: str) -> tuple[int, str, str]:
    """Run `calendly-connect api-keys argv...` as an operator would: exit code, stdout, stderr."""
    environ = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": database_url}
    return await run_cli(environ, "api-keys", *argv)


async def status_of(http: aiohttp.ClientSession, service: RunningService, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    async with http.get(f"{service.url}/v1/connections", headers=headers) as response:
        return response.status


async def test_a_key_from_the_command_line_works_over_http_until_revoked(
    sandbox: SandboxDriver, database_url: str
) -> None:
    code, out, err = await api_keys(database_url, "create", "--name", "billing", "--scope", "write")
    assert code == 0, err
    [key] = out.splitlines()  # the key alone on stdout
    assert key.startswith("ccsk_")
    assert len(key) >= 5 + 43
    assert "shown only this once" in err
    assert key[:13] in err
    assert key not in err

    async with (
        running_service(database_url, sandbox.url) as service,
        aiohttp.ClientSession() as http,
    ):
        assert await status_of(http, service, key) == 200
        # A user session for a host without JWTs: the user's /api routes and live stream.
        async with http.post(
            f"{service.url}/v1/users/alice/sessions", headers={"Authorization": f"Bearer {key}"}
        ) as response:
            assert response.status == 201, await response.text()
            session = (await response.json())["access_token"]
        as_alice = {"Authorization": f"Bearer {session}"}
        async with http.get(f"{service.url}/api/calendly/connection", headers=as_alice) as r:
            assert r.status == 404  # accepted as alice, who never connected
        async with http.get(f"{service.url}/api/live", headers=as_alice) as stream:
            assert stream.status == 200
            assert (await EventReader(stream).next()).event == "ready"
        async with http.get(f"{service.url}/v1/connections", headers=as_alice) as r:
            assert r.status == 401  # a session is not a key

        code, listed, err = await api_keys(database_url, "list")
        assert code == 0, err
        header, row = listed.splitlines()
        assert header.split()[:4] == ["ID", "NAME", "PREFIX", "SCOPE"]
        assert key[:13] in row
        assert "billing" in row
        assert " write " in row
        assert key not in listed

        code, out, err = await api_keys(database_url, "revoke", key[:13])
        assert code == 0, err
        assert "revoked" in out
        revoked_at = time.monotonic()
        while await status_of(http, service, key) == 200:
            assert time.monotonic() - revoked_at < 6, "a revoked key must fail within 5 s"
            await asyncio.sleep(0.2)
        assert await status_of(http, service, key) == 401

    code, listed, _ = await api_keys(database_url, "list", "--json")
    assert code == 0
    [shown] = json.loads(listed)["api_keys"]
    assert (shown["prefix"], shown["scope"]) == (key[:13], "write")
    assert shown["revoked_at"] is not None
    # Uses are noted in memory and written each minute, and when the service stops.
    assert shown["last_used_at"] is not None
    code, out, _ = await api_keys(database_url, "revoke", key[:13])
    assert code == 0
    assert "revoked already" in out


async def test_an_unknown_key_is_one_clear_error(database_url: str) -> None:
    code, out, err = await api_keys(database_url, "revoke", "ccsk_Nobody00")

    assert code == 1
    assert out == ""
    assert err.strip() == (
        "error: no API key has the id or prefix 'ccsk_Nobody00'; `calendly-connect api-keys "
        "list` shows every key"
    )


async def test_list_says_when_there_is_no_key(database_url: str) -> None:
    code, out, _ = await api_keys(database_url, "list")

    assert code == 0
    assert "no API keys yet" in out
