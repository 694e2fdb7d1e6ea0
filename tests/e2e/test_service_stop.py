"""`calendly-connect serve` stopped the way process managers stop it (SIGTERM; SIGINT from a
terminal): serving ends, then the process finishes its own stop (the grants it kept are stored,
DR-23, the pool closes) and exits 0, with no traceback. uvicorn re-raises the signal once it has
stopped serving, and SIGTERM's default action then ended the process before that."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from entrypoints.developer.launcher import listening_socket
from tests.support.sandbox import SandboxDriver
from tests.support.serve_process import INHERITED, serve_process
from tests.support.service import service_environment

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_lets_the_service_finish_its_own_stop(
    sandbox: SandboxDriver, database_url: str, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    sock = listening_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = service_environment(
        database_url, sandbox.url, sock.getsockname()[1], LOG_FORMAT="json"
    )
    environ = {**{k: os.environ[k] for k in INHERITED if k in os.environ}, **config}
    log = tmp_path / "serve.log"
    try:
        async with serve_process(environ, url, sock.fileno(), log) as process:
            process.send_signal(stop_signal)
            code = await process.wait()
    finally:
        sock.close()
    text = log.read_text(encoding="utf-8", errors="replace")
    assert code == 0, text[-2000:]
    assert '"service.stopped"' in text, text[-2000:]
    assert "Traceback" not in text
