"""`calendly-connect sandbox` starts a working sandbox, preloads users and stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "entrypoints.cli"]


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALENDLY_")}
    proc = subprocess.Popen(
        [*CLI, "sandbox", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = proc.stdout.readline()
    assert first.startswith("Calendly sandbox listening on "), first + proc.stderr.read()
    return proc, first.rsplit(" ", 1)[1].strip()


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as response:
        data: dict[str, object] = json.load(response)
        return data


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=10)


def test_sandbox_command_serves_and_stops_on_ctrl_c() -> None:
    proc, url = start()
    try:
        routes = get_json(f"{url}/_sandbox/routes")["routes"]
        assert "POST /oauth/token" in routes  # type: ignore[operator]
    finally:
        code = stop(proc)
    assert code == 0


def test_preload_file_creates_users(tmp_path: Path) -> None:
    preload = tmp_path / "users.json"
    preload.write_text(
        json.dumps(
            {
                "organizations": [{"id": "org-1", "name": "Acme"}],
                "users": [
                    {"name": "Ada Host", "email": "ada@example.com", "organization": "org-1"},
                    {"name": "Free Fred", "email": "fred@example.com", "plan": "free"},
                ],
            }
        )
    )
    proc, url = start("--preload", str(preload))
    try:
        users = get_json(f"{url}/_sandbox/users")["users"]
    finally:
        stop(proc)
    by_email = {u["email"]: u for u in users}  # type: ignore[attr-defined]
    assert by_email["ada@example.com"]["current_organization"].endswith("/organizations/org-1")
    assert by_email["fred@example.com"]["plan"] == "free"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "cannot preload"),
        ('{"users": [{"name": "No Email"}]}', "email"),
        (
            '{"users": [{"name": "A", "email": "a@x.org"}, {"name": "B", "email": "a@x.org"}]}',
            "already exists",
        ),
    ],
)
def test_a_bad_preload_file_is_refused_with_a_clear_message(
    tmp_path: Path, content: str, needle: str
) -> None:
    preload = tmp_path / "bad.json"
    preload.write_text(content)
    result = subprocess.run(
        [*CLI, "sandbox", "--port", "0", "--preload", str(preload)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_without_a_command_prints_help_and_fails() -> None:
    result = subprocess.run([*CLI], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "sandbox" in result.stdout


def test_a_state_file_keeps_the_world_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    secret = "s3cret-for-this-test"
    env_args = ("--state-file", str(state), "--client-secret", secret)
    proc, url = start(*env_args)
    try:
        request = urllib.request.Request(
            f"{url}/_sandbox/users",
            data=json.dumps({"name": "Ada Host", "email": "ada@example.com"}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            user = json.load(response)
        booking = urllib.request.Request(
            f"{url}/_sandbox/users/{user['id']}/bookings",
            data=json.dumps(
                {
                    "start_time": "2030-01-01T10:00:00Z",
                    "invitees": [{"name": "G", "email": "g@x.org"}],
                }
            ).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(booking, timeout=5):
            pass
    finally:
        assert stop(proc) == 0
    assert state.exists()
    proc, url = start(*env_args)
    try:
        users = get_json(f"{url}/_sandbox/users")["users"]
        events = get_json(f"{url}/_sandbox/users/{user['id']}/events")
    finally:
        stop(proc)
    assert [u["email"] for u in users] == ["ada@example.com"]  # type: ignore[attr-defined]
    assert len(events["events"]) == 1  # type: ignore[arg-type]
