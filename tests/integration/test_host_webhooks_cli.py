"""`calendly-connect host-webhooks run | status | replay | retry | enable | remove` as real
processes,
against real Postgres, delivering to a receiver in this test that verifies with
`standardwebhooks`."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.support.cli import run_cli
from tests.support.real_core import RealCore
from tests.support.receiver import serving

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


async def cli(environ: dict[str, str], *argv: str) -> tuple[int, str, str]:
    return await run_cli(environ, "host-webhooks", *argv)


@pytest.fixture
async def received() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    payloads: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        payloads.append(Webhook(SECRET).verify(await request.read(), dict(request.headers)))
        return web.Response(status=204)

    async with serving(handle) as url:
        yield url, payloads


async def test_the_dispatcher_process_delivers_and_the_operator_steers_it(
    real: RealCore, database_url: str, received: tuple[str, list[dict[str, Any]]]
) -> None:
    url, payloads = received
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": database_url,
        "HOST_WEBHOOK_URL": f"crm={url}",
        "HOST_WEBHOOK_SECRET": f"crm={SECRET}",
        "LOG_FORMAT": "json",
    }
    dispatcher = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "entrypoints.cli",
        "host-webhooks",
        "run",
        cwd=ROOT,
        env=environ,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        for _ in range(100):  # the endpoint exists once the dispatcher has started
            code, out, _ = await cli(environ, "status", "--json")
            if code == 0 and json.loads(out)["endpoints"]:
                break
            await asyncio.sleep(0.1)
        await real.connect("alice", "alice@example.com")
        for _ in range(100):
            if any(p["type"] == "connection.connected" for p in payloads):
                break
            await asyncio.sleep(0.1)
        assert any(p["type"] == "connection.connected" for p in payloads), payloads
        # It yields the CPU to the services ingesting webhooks (HOST_WEBHOOK_NICE, DR-37).
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, dispatcher.pid) == max(10, own)
        code, out, err = await cli(environ, "status", "--json")
        assert code == 0, err
        [crm] = json.loads(out)["endpoints"]
        assert (crm["name"], crm["state"], crm["backlog"]) == ("crm", "ok", 0)
        assert crm["last_success_at"] is not None

        count = len(payloads)
        code, out, err = await cli(
            environ, "replay", "--since", "2000-01-01T00:00:00Z", "--endpoint", "crm"
        )
        assert (code, out.strip()) == (
            0,
            "1 stream(s) will send again every change since 2000-01-01T00:00:00+00:00",
        ), err
        for _ in range(100):  # a replay sends the same messages again
            if len(payloads) >= 2 * count:
                break
            await asyncio.sleep(0.1)
        assert [p["data"]["sequence"] for p in payloads[count:]] == [
            p["data"]["sequence"] for p in payloads[:count]
        ]
        code, out, _ = await cli(environ, "status")
        assert code == 0
        assert out.startswith(f"crm: ok  {url}")
        assert (await cli(environ, "retry"))[0] == 0
        code, _, err = await cli(environ, "enable", "nobody")
        assert code == 1
        assert "no endpoint named 'nobody'" in err
        assert (await cli(environ, "replay", "--since", "yesterday"))[0] == 2
        code, _, err = await cli(environ, "remove", "nobody")
        assert code == 1
        assert "no endpoint named 'nobody'" in err
    finally:
        dispatcher.terminate()
        _, errors = await asyncio.wait_for(dispatcher.communicate(), 30)
    assert dispatcher.returncode == 0, errors.decode()[-2000:]
    # The dispatcher gone, the endpoint it was configured with can be forgotten.
    code, out, err = await cli(environ, "remove", "crm")
    assert code == 0, err
    assert "forgotten" in out
    code, out, _ = await cli(environ, "status")
    assert "crm" not in out


async def test_run_without_an_endpoint_refuses_to_start(database_url: str) -> None:
    environ = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": database_url}
    code, _, err = await cli(environ, "run")
    assert code != 0
    assert "HOST_WEBHOOK_URL is not set" in err
    environ["HOST_WEBHOOK_URL"] = "http://crm.example/hook"
    environ["HOST_WEBHOOK_SECRET"] = SECRET
    code, _, err = await cli(environ, "run")
    assert code != 0
    assert "HOST_WEBHOOK_URL" in err
    assert "https" in err
