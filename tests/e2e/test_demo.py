"""`make demo` (the whole stack as `make run` starts it, played through) passes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_demo_passes_every_check() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALENDLY_", "DATABASE_"))}
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.demo"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert " 0 failed" in result.stdout
    assert result.stdout.count("✓") >= 12
