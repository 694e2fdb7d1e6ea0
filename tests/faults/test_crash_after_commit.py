"""Row 13: a worker dies after the delivery's transaction committed, before it answered.
Calendly saw no answer and retries; the retry is a `duplicate` and the effect stays single.

The service runs as real `calendly-connect serve` processes on one listening socket that the
test holds (as `make run` shares one among its workers). The first process carries the
test-only fault hook `CALENDLY_CONNECT_FAULT=exit-after-webhook-commit`, so it exits with 137
(as if SIGKILLed) exactly between the commit and the answer: deterministic, no timing games.
The retry reaches a second process started without the hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from entrypoints.service.http.routes.webhooks import EXIT_AFTER_COMMIT, FAULT_ENV
from tests.faults.conftest import booking, deliver, effects, eventually
from tests.support.journeys import connect
from tests.support.sandbox import SandboxDriver
from tests.support.service import RunningService, register_client, service_environment

REPO = Path(__file__).resolve().parents[2]
STARTUP = 30.0
KILLED = 137
# What a child needs from our own environment; the service's configuration is added on top.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """The service's listening socket, held by the test across the processes that serve it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.set_inheritable(True)
    try:
        yield sock
    finally:
        sock.close()


def child_environment(service_env: dict[str, str], **extra: str) -> dict[str, str]:
    inherited = {k: os.environ[k] for k in INHERITED if k in os.environ}
    return {**inherited, **service_env, **extra}


Process = asyncio.subprocess.Process


def read_log(log: Path) -> str:
    return log.read_text(errors="replace")


@contextlib.asynccontextmanager
async def service_process(
    http: aiohttp.ClientSession,
    url: str,
    listener: socket.socket,
    environ: dict[str, str],
    log: Path,
) -> AsyncIterator[Process]:
    """`python -m entrypoints.cli serve --fd N`, ready when it yields; stopped on the way out."""
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "entrypoints.cli",
            "serve",
            "--fd",
            str(listener.fileno()),
            cwd=REPO,
            env=environ,
            pass_fds=(listener.fileno(),),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        async def ready() -> bool:
            assert process.returncode is None, f"exited {process.returncode}:\n{read_log(log)}"
            try:
                async with http.get(f"{url}/health/ready") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, within=STARTUP, what="the service process to be ready")
        yield process
    finally:
        await stop(process)


async def stop(process: Process) -> None:
    """SIGTERM the process we started (then SIGKILL it), and reap it; never anything else."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), 10)


async def test_a_worker_killed_between_commit_and_answer_loses_nothing_and_applies_once(
    sandbox: SandboxDriver,
    database_url: str,
    http: aiohttp.ClientSession,
    listener: socket.socket,
    tmp_path: Path,
) -> None:
    port = listener.getsockname()[1]
    config = service_environment(database_url, sandbox.url, port)
    service: RunningService = await register_client(http, sandbox.url, config)
    doomed = child_environment(config, **{FAULT_ENV: EXIT_AFTER_COMMIT})
    healthy = child_environment(config)

    async with service_process(http, service.url, listener, doomed, tmp_path / "a.log") as a:
        connection = (await connect(http, service, "alice", "ada@example.com")).connection
        body = booking(connection["calendly_user_uri"])

        # The delivery is committed, then the worker dies: Calendly gets no status at all.
        started = time.monotonic()
        with pytest.raises(aiohttp.ClientConnectionError):
            await deliver(http, service.url, body, service.signing_key)
        assert await asyncio.wait_for(a.wait(), 10) == KILLED
        assert time.monotonic() - started < 10
    assert await effects(database_url) == (1, 1, 1)  # committed before the crash: not lost

    async with service_process(http, service.url, listener, healthy, tmp_path / "b.log") as b:
        # Calendly retries the delivery it never saw answered: a duplicate, nothing more.
        retried = await deliver(http, service.url, body, service.signing_key)
        assert retried.status == 200, retried.body
        assert retried.body == {"outcome": "duplicate"}
        assert await effects(database_url) == (1, 1, 1)

        again = await deliver(http, service.url, body, service.signing_key)
        assert again.body == {"outcome": "duplicate"}
        assert await effects(database_url) == (1, 1, 1)
        # The meeting is there for its user, exactly once.
        async with http.get(f"{service.url}/api/meetings", headers=service.auth("alice")) as r:
            assert r.status == 200
            (meeting,) = (await r.json())["meetings"]
        assert len(meeting["invitees"]) == 1
        assert b.returncode is None
