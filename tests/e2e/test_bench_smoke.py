"""The benchmarks' own correctness checks in a tiny configuration; never their timings.

`make bench` measures speed; here only what makes a benchmark's result trustworthy is checked:
after a burst of signed deliveries (new bookings, exact duplicates, cancels) the database holds
exactly what was delivered, and the Calendly call counts per operation come out of the sandbox's
log the same way every time, and every booking reaches the host webhook receiver exactly once,
verified with standardwebhooks.
"""

from __future__ import annotations

import shutil

import pytest

from benchmarks import calls, host_webhooks, ingest

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def wrk_installed() -> None:
    # Not a skip: `make test` installs wrk (apt); without it this check must fail, not vanish.
    assert shutil.which("wrk"), "wrk is needed: apt-get install wrk (make test and make bench do)"


def quiet(_: str) -> None:
    return None


def test_the_ingest_benchmark_checks_the_database_against_what_was_delivered() -> None:
    config = ingest.Config(
        seconds=2, repeats=1, users=5, warmup_seconds=0, processes=(1,), references=False
    )
    result = ingest.run(config, log=quiet)
    run = result["service_1"]["runs"][0]
    assert result["service_1"]["ok"], run["problems"]
    counts = run["counts"]
    assert counts["new_bookings"] > 0
    assert counts["duplicates"] > 0
    assert counts["cancels"] > 0
    assert counts["meetings"] > 0


def test_the_calls_benchmark_counts_each_operation_the_same_way_every_time() -> None:
    result = calls.run(repeats=2, log=quiet)
    assert result["ok"], result["problems"]
    for operation in calls.OPERATIONS:
        assert result[operation]["same_every_time"], result[operation]
        assert result[operation]["calls"] > 0
    assert result["connect"]["write_transactions"] > 0  # the write probe sees writes at all


def test_the_host_webhooks_benchmark_sees_every_booking_delivered_once_and_verified() -> None:
    config = host_webhooks.Config(
        seconds=2, repeats=1, users=5, rate=20, warmup_seconds=0, processes=1, ingest=False
    )
    result = host_webhooks.run(config, log=quiet)
    assert result["ok"], result["problems"]
    assert result["sent"] == 40
    assert result["delivered"] == result["sent"]
    assert result["runs"][0]["events"].get("meeting.created") == 40
