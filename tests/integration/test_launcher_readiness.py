"""The local stack (`make run`, the benchmarks, chaos) is ready only when every service process
serves: the kernel sends the readiness probes to the processes that already listen, so probes
alone once let READY through while a second process was still importing, and a Ctrl-C then
caught that process mid-import (CI, 2026-12-07)."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from entrypoints.developer.launcher import LocalStack

# A stand-in service: waits, listens on the inherited socket, says so in a file, answers 200.
SERVER = """
import http.server, pathlib, socket, sys, time
fd, delay, marker = int(sys.argv[1]), float(sys.argv[2]), pathlib.Path(sys.argv[3])
time.sleep(max(delay, 0))
if delay < 0:
    raise SystemExit(3)
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Ready, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=fd)
marker.write_text("listening")  # before: a file written after could lag behind the probes
server.socket.listen(16)
marker.with_suffix(".done").write_text("listening")
server.serve_forever()
"""


def start(stack: LocalStack, delay: float, marker: Path) -> None:
    stack.start_on_socket(
        "stand-in", [sys.executable, "-c", SERVER, "{fd}", str(delay), str(marker)]
    )


def test_ready_waits_for_the_process_that_starts_late(tmp_path: Path) -> None:
    stack = LocalStack(dict(os.environ))
    try:
        stack.listen()
        early, late = tmp_path / "early", tmp_path / "late"
        start(stack, 0, early)
        start(stack, 2.0, late)  # still "importing" long after the first one answers
        stack.wait_ready()
        assert early.exists()
        assert late.exists(), "ready was declared while a service process did not listen yet"
    finally:
        stack.stop()


def test_a_process_that_ends_before_listening_is_named_not_waited_for(tmp_path: Path) -> None:
    stack = LocalStack(dict(os.environ))
    try:
        stack.listen()
        start(stack, 0, tmp_path / "fine")
        start(stack, -1, tmp_path / "never")  # exits 3 without listening
        with pytest.raises(RuntimeError, match=r"stand-in stopped unexpectedly \(exit 3"):
            stack.wait_ready()
    finally:
        stack.stop()


def test_a_process_that_dies_after_listening_leaves_no_socket_behind(tmp_path: Path) -> None:
    """Once the stack has seen a process listen (any `check_running`, as `dev` runs every half
    second), only that process holds its socket: when it dies, the kernel stops sending it
    connections, which would otherwise wait, unanswered, on a socket nobody accepts from."""
    stack = LocalStack(dict(os.environ))
    try:
        stack.listen()
        start(stack, 0, tmp_path / "one")
        start(stack, 0, tmp_path / "two")
        stack.wait_ready()
        start(stack, 0, tmp_path / "third")
        third = stack.services[-1]
        deadline = time.monotonic() + 30
        while not (tmp_path / "third.done").exists():
            assert time.monotonic() < deadline, "the third process did not listen"
            time.sleep(0.05)
        stack.check_running()  # what `dev` does every half second
        third.send_signal(signal.SIGKILL)
        third.wait()
        for _ in range(40):  # the kernel's spread reaches every socket in the group
            with urllib.request.urlopen(f"{stack.url}/health/ready", timeout=3) as answer:
                assert answer.status == 200
    finally:
        stack.stop()
