"""The Dockerfile, compose.yaml and .dockerignore, kept in step with the wheel and the command
line (no container engine runs here to try them): the image builds and installs the wheel as
tests/packaging/test_wheel.py does, and runs only commands the CLI has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from entrypoints.cli import COMMANDS
from tests.support.container import healthcheck_probe, instructions

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    return loaded


def test_the_image_builds_the_wheel_and_installs_it_with_the_pinned_dependencies() -> None:
    (build,) = [run for run in instructions("RUN") if "uv build" in run]
    assert "--out-dir /dist" in build
    # With the tracing extra: traces are on in the image as soon as an OTLP endpoint is set.
    assert '-c requirements.lock "$(ls /dist/calendly_connect-*.whl)[tracing]"' in build
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    (uv_version,) = re.findall(r"^UV_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert f"UV_VERSION={uv_version}" in instructions("ARG")  # the uv of make install


def test_the_runtime_stage_is_slim_python_3_11_unprivileged_and_serves() -> None:
    (image,) = [a for a in instructions("ARG") if a.startswith("PYTHON_IMAGE=")]
    assert image.startswith("PYTHON_IMAGE=python:3.11-slim")
    assert instructions("FROM") == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    (user,) = instructions("USER")
    assert user not in ("root", "0")
    (command,) = instructions("CMD")
    assert command == '["calendly-connect", "serve"]'
    (check,) = instructions("HEALTHCHECK")
    assert "/health/ready" in check
    assert "curl" not in check
    # python that parses; tests/packaging/test_wheel.py runs it against the installed wheel
    compile(healthcheck_probe(), "HEALTHCHECK", "exec")


def test_compose_migrates_once_before_the_service_and_the_worker_start() -> None:
    services = compose()["services"]
    assert services["postgres"]["image"] == "postgres:16"
    commands = {name: s["command"] for name, s in services.items() if "command" in s}
    assert commands == {
        "migrate": ["calendly-connect", "migrate"],
        "service": ["calendly-connect", "serve"],
        "worker": ["calendly-connect", "worker"],
    }
    for argv in commands.values():
        assert argv[1] in COMMANDS
    for name in ("service", "worker"):
        wants = services[name]["depends_on"]["migrate"]["condition"]
        assert wants == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_commits_no_secret() -> None:
    """Settings come from .env; the one password is required from it, never written here."""
    text = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    for name in ("migrate", "service", "worker"):
        assert compose()["services"][name]["env_file"] == ".env"
    passwords = re.findall(r"postgresql://[^:]+:([^@]+)@", text)
    passwords += re.findall(r"POSTGRES_PASSWORD: (\S+)", text)
    assert passwords
    assert all(p.startswith("${POSTGRES_PASSWORD:?") for p in passwords)
    assert not re.search(r"(SECRET|KEY|TOKEN)\w*:", text)


def test_the_build_context_has_what_the_wheel_needs_and_no_local_state() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (
        "domain",
        "adapters",
        "entrypoints",
        "calendly_sandbox",
        "migrations",
        "clients",
        "clients/js",
        "pyproject.toml",
        "README.md",
        "requirements.lock",
    ):
        assert needed not in ignored
    assert {".venv", ".data", ".env", ".git", "*.egg-info"} <= ignored
