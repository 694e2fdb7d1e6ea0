"""Debian's chromium for Playwright: where it is, and the flags it runs with in containers."""

from __future__ import annotations

import os
import shutil

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    # Not a skip: CI installs chromium (.ci/run); without it a browser test must fail loudly.
    assert found, "Debian's chromium is needed: apt-get install chromium (see .ci/run)"
    return found
