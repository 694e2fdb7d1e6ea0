"""The command line as an operator runs it: `calendly-connect <command> ...` in a subprocess."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


async def run_cli(
    environ: Mapping[str, str], command: str, *argv: str, seconds: float = 60
) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `calendly-connect command argv...` with `environ`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "entrypoints.cli",
        command,
        *argv,
        cwd=ROOT,
        env=dict(environ),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), seconds)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
