"""`make chaos` in a small configuration: every fault once, and the ground truth must hold."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from chaos.run import Chaos, ChaosConfig

# What a chaos run checks against the ground truth, by the names it reports.
EVERY_CHECK = [
    "0 meetings lost",
    "0 effects applied twice",
    "0 meetings visible to the wrong user",
    "every invitee in its final state (status, links, no-show)",
    "every meeting in its final state (owner, status, title, start)",
    "every meeting a legacy delivery lacked details for read from Calendly",
    "every connection in the right status (the revoked one needs_reauth)",
    "every subscription active again",
    "no user reads another user's meetings through the API",
]


@pytest.mark.slow
async def test_a_small_chaos_run_loses_nothing_and_duplicates_nothing() -> None:
    config = ChaosConfig(users=5, webhooks=300, pg_restarts=2, seed=11, quiet=True)
    with tempfile.TemporaryDirectory(prefix="calendly-chaos-test-") as tmp:
        report = await Chaos(config, Path(tmp)).run()
    failed = [(name, detail) for name, ok, detail in report.checks if not ok]
    assert failed == [], (failed, report.facts)
    assert sorted(name for name, _, _ in report.checks) == sorted(EVERY_CHECK)  # each once
    assert report.facts["deliveries_sent"] >= 250
    assert report.facts["duplicates_sent"] > 0
    assert report.facts["legacy_shape_deliveries"] > 0  # one host of five
