"""`calendly-connect serve --fd N` as a real process, for the tests that need one: started with
an environment, ready when handed over, stopped with SIGTERM as a process manager would."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
# What a child keeps of this process's environment (beside its service settings).
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


@asynccontextmanager
async def serve_process(
    environ: dict[str, str], url: str, fd: int, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`calendly-connect serve --fd N`, ready (200 on /health/ready) when it yields."""
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "entrypoints.cli",
            "serve",
            "--fd",
            str(fd),
            cwd=REPO,
            env=environ,
            pass_fds=(fd,),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                assert process.returncode is None, f"exited {process.returncode}: see {log}"
                try:
                    async with http.get(f"{url}/health/ready") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"not ready: see {log}")
        yield process
    finally:
        await stop(process)


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()
