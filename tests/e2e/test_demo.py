"""`make demo` (the whole stack as `make run` starts it, played through) passes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

# What the demo checks, by the names it prints.
EVERY_CHECK = [
    "alice connected, Calendly user URI recorded, webhook active",
    "bob connected",
    "carol (free plan) connected with webhooks marked unavailable",
    "alice's Calendly account cannot be attached to bob",
    "the booking reached alice's open page without a reload",
    "alice sees exactly her meeting",
    "bob sees only his own",
    "carol sees nothing of theirs",
    "three copies of one delivery: all acknowledged, one meeting, one invitee",
    "the canceled meeting shows as canceled",
    "old time canceled, new time active, the two linked",
    "reconnect with nothing changed: no OAuth, no writes at Calendly",
    "bob disconnected: subscription deleted at Calendly, token revoked, history kept",
    "a second disconnect answers the same",
]
# One printed verdict: "  ✓ <name>" or "  ✗ <name>", then "  (<detail>)" if there is one.
VERDICT = re.compile(r"  (?P<mark>[✓✗]) (?P<name>.+?)(?:  \(.*\))?")


def verdicts(printed: str) -> list[tuple[str, bool]]:
    """Each check the demo printed, in order, and whether it passed."""
    found = (VERDICT.fullmatch(line) for line in printed.splitlines())
    return [(m["name"], m["mark"] == "✓") for m in found if m]


@pytest.mark.slow
def test_the_demo_passes_every_check() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALENDLY_", "DATABASE_"))}
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.developer.demo"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert " 0 failed" in result.stdout
    checks = verdicts(result.stdout)
    assert [name for name, ok in checks if not ok] == [], result.stdout[-4000:]
    assert sorted(name for name, _ in checks) == sorted(EVERY_CHECK)  # each once, none else
