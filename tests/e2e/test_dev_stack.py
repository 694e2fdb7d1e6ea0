"""`make run` (`calendly-connect dev`) as a developer meets it (issue 14, item 5): a bad setting
stops it at once, Ctrl-C ends it cleanly even with live streams open, a second stack refuses
the first one's data folder, and `make doctor` checks the running stack with nothing exported.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the stack would otherwise take from a developer's shell.
FOREIGN = ("CALENDLY_", "DATABASE_", "DOCTOR_", "TOKEN_", "JWT_", "HOST_WEBHOOK", "LOG_")


def dev_environment(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    env.pop("DATA_DIR", None)
    env.pop("PUBLIC_BASE_URL", None)
    return {**env, **settings}


def start_dev(data: Path, **settings: str) -> subprocess.Popen[bytes]:
    """`calendly-connect dev` on free ports, in its own process group (as a terminal runs it:
    Ctrl-C reaches it and every child at once)."""
    argv = ["dev", "--port", "0", "--sandbox-port", "0", "--data-dir", str(data)]
    return subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", *argv],
        cwd=ROOT,
        env=dev_environment(**settings),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def read_until_ready(proc: subprocess.Popen[bytes], seconds: float = 90) -> dict[str, str]:
    """The READY line's fields; AssertionError with what it printed if it never comes. The
    rest of what the stack prints is drained meanwhile (a full pipe would stall it)."""
    assert proc.stdout is not None
    stream = proc.stdout
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for raw in stream:
            lines.put(raw.decode(errors="replace"))
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    printed: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if not line:
            break
        printed.append(line)
        if line.startswith("READY "):
            proc.printed = lines  # type: ignore[attr-defined]
            return dict(part.split("=", 1) for part in line.split()[1:])
    raise AssertionError("the stack did not start:\n" + "".join(printed))


def printed_after_ready(proc: subprocess.Popen[bytes]) -> str:
    """Everything the stack printed after READY, once it has exited."""
    lines: queue.Queue[str] = proc.printed  # type: ignore[attr-defined]
    text = []
    while (line := lines.get(timeout=30)) != "":
        text.append(line)
    return "".join(text)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def data() -> Iterator[Path]:
    # Outside pytest's temporary tree (see tests/conftest.py, pg_cluster: socket path length).
    folder = Path(tempfile.mkdtemp(prefix="calendly-dev-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[dict[str, str], Path]]:
    folder = Path(tempfile.mkdtemp(prefix="calendly-dev-"))
    proc = start_dev(folder)
    try:
        yield read_until_ready(proc), folder
    finally:
        stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("LOG_LEVEL", "verbose", "LOG_LEVEL is 'verbose'"),
        ("JWT_SECRET", "short", "JWT_SECRET is too short"),
        ("DB_POOL_MAX_SIZE", "0", "DB_POOL_MAX_SIZE is '0'"),
    ],
)
def test_a_bad_setting_stops_make_run_at_once_saying_so_once(
    data: Path, setting: str, value: str, problem: str
) -> None:
    started = time.monotonic()
    proc = start_dev(data, **{setting: value})
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        stop(proc)
    printed = out.decode(errors="replace")
    assert proc.returncode == 2, printed
    assert time.monotonic() - started < 10, printed
    assert printed.count(problem) == 1, printed
    assert "Traceback" not in printed
    # Checked before anything started: no database, no sandbox, no waiting for readiness.
    assert "starting" not in printed, printed
    assert not (data / "postgres").exists()


def test_a_second_stack_refuses_the_data_folder_of_a_running_one(
    stack: tuple[dict[str, str], Path],
) -> None:
    fields, folder = stack
    started = time.monotonic()
    proc = start_dev(folder)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        stop(proc)
    printed = out.decode(errors="replace")
    assert proc.returncode == 1, printed
    assert time.monotonic() - started < 10
    assert printed.count("error:") == 1, printed
    # Names the running one (its pid and address) and how to run a second one beside it.
    assert "another `calendly-connect dev`" in printed
    assert fields["local"] in printed, printed
    assert "DATA_DIR=" in printed
    assert "starting" not in printed


def test_make_doctor_checks_the_running_stack_with_nothing_exported(
    stack: tuple[dict[str, str], Path],
) -> None:
    _, folder = stack
    settings = folder / "stack.env"
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    deadline = time.monotonic() + 30
    while True:  # the worker's first heartbeat may follow READY by a moment
        result = subprocess.run(
            # -o: never reinstall .venv here (pyproject.toml may be newer than the stamp).
            ["make", "-s", "-o", ".venv/.installed", "doctor", f"DATA_DIR={folder}"],  # noqa: S607
            cwd=ROOT,
            env=dev_environment(DOCTOR_ARGS="--json"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = json.loads(result.stdout)["checks"]
    assert {c["status"] for c in checks} <= {"pass", "skip"}, checks
    assert all(c["fix"] for c in checks if c["status"] != "pass"), checks


def test_the_stack_serves_metrics_behind_its_own_token(
    stack: tuple[dict[str, str], Path],
) -> None:
    fields, folder = stack
    lines = (folder / "stack.env").read_text().splitlines()
    settings = dict(
        shlex.split(line)[0].split("=", 1) for line in lines if line and not line.startswith("#")
    )
    token = settings["METRICS_TOKEN"]
    assert len(token) >= 32
    url = f"{fields['local']}/metrics"
    refused = urllib.request.Request(url)
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(refused, timeout=10)
    assert error.value.code == 401
    allowed = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(allowed, timeout=10) as response:
        text = response.read().decode()
    assert "calendly_connect_webhook_deliveries_total" in text
    assert (folder / "metrics").is_dir()


def test_ctrl_c_ends_the_stack_cleanly_with_live_streams_open(data: Path) -> None:
    proc = start_dev(data, WORKERS="2")
    try:
        fields = read_until_ready(proc)
        local = fields["local"]
        login = urllib.request.Request(
            f"{local}/api/dev/login",
            data=json.dumps({"user_id": "ada"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(login, timeout=10) as answer:
            token = json.load(answer)["access_token"]
        host, port = local.removeprefix("http://").split(":")
        streams = []
        for _ in range(4):  # both processes take some: they accept in turn
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(
                f"GET /api/live HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
                f"Authorization: Bearer {token}\r\n\r\n".encode()
            )
            received = b""
            while b"event: ready" not in received:
                received += sock.recv(65536)
            streams.append(sock)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)  # and an impatient second one
        proc.wait(timeout=30)
        printed = printed_after_ready(proc)
    finally:
        stop(proc)
    assert proc.returncode == 0, printed
    assert "Traceback" not in printed, printed
    assert "CancelledError" not in printed, printed
    assert "Errno" not in printed, printed
    assert "stopping" in printed
    for sock in streams:
        sock.close()
    # The data folder is free again, and `make doctor` no longer finds a stack there.
    assert not (data / "stack.env").exists()
