"""Issue 14: CI is the README's commands; `.env.example` loads as README says; tokens sealed
with keys this deployment lacks are answered as what they are (the operator's to fix)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from adapters.crypto import DecryptionFailed
from entrypoints.service.http.errors import ErrorTable

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / ".env.example"


def source(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / ".env"
    env_file.write_text(text)
    return subprocess.run(
        ["bash", "-c", 'set -eu; set -a && . "$1" && set +a; env', "-", str(env_file)],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_env_example_can_be_sourced_as_readme_says(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    assert subprocess.run(["bash", "-n", str(EXAMPLE)], check=False).returncode == 0  # noqa: S607
    loaded = source(text, tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stderr == ""
    assert "DATABASE_URL=postgresql://" in loaded.stdout
    assert "JWT_SECRET=change-me" in loaded.stdout


def test_every_commented_example_can_be_sourced_too(tmp_path: Path) -> None:
    # What a developer uncomments must not break the shell either.
    text = re.sub(r"^# ([A-Z_]+=)", r"\1", EXAMPLE.read_text(), flags=re.MULTILINE)
    loaded = source(text, tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stderr == ""
    assert "HOST_WEBHOOK_SECRET=whsec_change-me" in loaded.stdout


def test_env_example_has_no_shell_breaking_placeholders() -> None:
    assignments = [
        line.removeprefix("# ")
        for line in EXAMPLE.read_text().splitlines()
        if re.match(r"^(# )?[A-Z_]+=", line)
    ]
    assert assignments
    assert [line for line in assignments if re.search(r"[<>]", line)] == []


def test_tokens_this_deployment_cannot_decrypt_are_a_clear_problem_not_an_internal_error() -> None:
    answer = ErrorTable().answer(DecryptionFailed("the key id 'k0' is not configured"), "req-1")
    problem = answer.problem
    assert problem.type.endswith(":stored-credentials-unreadable")
    assert problem.status == 500
    assert "cannot be decrypted" in problem.detail
    assert "TOKEN_ENCRYPTION_KEY" in problem.detail
    assert "connect Calendly again" in problem.detail  # what to do
    assert "k0" not in problem.detail  # which key is the log's business, not the caller's


def test_ci_runs_only_the_readmes_commands_and_make_test_installs_what_its_tests_drive() -> None:
    """CI proves what a new user gets: `.ci/run` is README's lint and test commands, nothing
    installed beside them; `make test` installs the apt tools its tests drive itself."""
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [
        line.strip()
        for line in ci.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))
    ]
    assert commands == ["make lint", "make test"]
    readme = (ROOT / "README.md").read_text()
    assert "$ make test " in readme
    assert "make lint" in readme
    makefile = (ROOT / "Makefile").read_text()
    test_target = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    for tool, package in (("chromium", "chromium"), ("wrk", "wrk")):
        assert f"$(call apt_need,{tool},{package})" in test_target
    js_target = makefile.split("\ntest-js:", 1)[1].split("\n\n", 1)[0]
    assert "$(call apt_need,node,nodejs)" in js_target


def test_a_metrics_directory_that_cannot_be_used_is_said_plainly_by_every_command(
    tmp_path: Path,
) -> None:
    """prometheus_client opens its files there as soon as the metrics are imported, before any
    command reads its settings: without the command line's own check, a traceback."""
    missing = tmp_path / "no-such-dir"
    for command in ("migrate", "doctor", "worker"):
        result = subprocess.run(
            [sys.executable, "-m", "entrypoints.cli", command],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(missing)},
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert f"PROMETHEUS_MULTIPROC_DIR is '{missing}', which is not a directory" in result.stderr
