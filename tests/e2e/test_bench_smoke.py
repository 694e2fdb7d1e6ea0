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

from benchmarks import calls, host_webhooks, ingest, live, report, storage, worker, worker_day

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
    # Where each delivery's CPU went: every part measured (wrk, a child, counted once it ended),
    # and the table says it with the rate at which that cost fills every core.
    cpu = result["service_1"]["cpu_us"]
    assert cpu == run["cpu_us"]
    assert all(cpu[part] > 0 for part in ("service", "postgres", "load")), cpu
    ceiling = result["service_1"]["cpu_ceiling"]
    assert ceiling == round(ingest.CORES * 1e6 / sum(cpu.values()))
    (row,) = [r for r in report.rows({"ingest": result}) if r[0].startswith("1. ingest, 1 ")]
    assert f"service {cpu['service']:,.0f} µs" in row[1], row
    assert f"every core busy at {ceiling:,.0f}/s" in row[1], row


def test_the_live_benchmark_sees_every_meeting_on_its_streams_and_checks_ingest_beside_them() -> (
    None
):
    config = live.Config(
        streams=40,
        users=8,
        rate=20,
        seconds=2,
        repeats=1,
        ingest_seconds=2,
        quiet_users=4,
        quiet_repeats=2,
    )
    result = live.run(config, log=quiet)
    assert result["ok"], result["problems"]
    assert result["runs"][0]["arrivals"] > 0
    for key in ("ingest_cost", "ingest_cost_watched"):
        cost = result[key]
        assert cost["ok"], [r["problems"] for r in cost["runs"].values()]
        assert all(r["counts"]["new_bookings"] > 0 for r in cost["runs"].values())
    # Two runs with the streams open, each between two without.
    cost = result["ingest_cost"]
    assert set(cost["runs"]) == {"without_1", "with_1", "without_2", "with_2", "without_3"}
    assert len(cost["ratios"]) == 2
    assert set(result["ingest_cost_watched"]["runs"]) == {"with", "without"}


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


def test_the_worker_benchmark_keeps_issue_15s_promises_on_the_sandboxs_clock() -> None:
    # A small mix through a whole day of Calendly time (steps of 30 s): each promise is
    # seen kept (what the figures of `make bench` rest on), an idle paid connection costs at
    # most 2 calls a day, and the old defaults, on the same code, cost far more.
    day = worker_day.DayConfig(
        idle_paid=40,
        active_paid=3,
        free_watched=2,
        free_unwatched=3,
        revoked_unwatched=1,
        revoked_opened=1,
        disabled_in_outage=2,
        old_idle_paid=4,
        old_free_unwatched=2,
        step_seconds=30,
    )
    result = worker.run(
        worker.Config(sizes=(100, 2_000), samples=20, warmup=2, due_now=50, day=day), log=quiet
    )
    assert result["ok"], result.get("problems")
    assert result["claim_p99_ratio"] > 0
    found = result["detection_seconds"]
    assert found["recreated"] <= 900
    assert found["gap"] <= 900
    assert found["revoked_unwatched"] <= 86_400
    assert found["revoked_opened"] <= 60
    assert found["watched_booking"] <= 60
    # About 1.5 a day in the steady state; 40 connections over half a day is a small sample
    # (a standard deviation near 0.3), hence the margin here; `make bench` measures 8,400.
    assert 0.5 <= result["calls_per_idle_connection_per_day"] <= 2.5
    assert result["day"]["old_calls_per_idle_connection_per_day"] >= 30
    assert result["day"]["rate_limits_kept"]


def test_the_storage_benchmark_sees_the_delivery_log_stop_growing() -> None:
    # Eight simulated days with a three-day retention: the rows kept stop at three days' worth
    # plus the day being pruned, and the size with them (VACUUM lets the space be reused).
    result = storage.run(storage.Config(days=8, per_day=2_000, payload_days=3), log=quiet)
    short = result["short_retention"]  # payloads emptied after a day, rows gone after three
    assert short["ok"], short.get("problems")
    assert max(short["rows_by_day"]) <= 2_000 * 4
    assert result["ok"], result.get("problems")
    assert result["rows_by_day"][:3] == [2_000, 4_000, 6_000]
    assert max(result["rows_by_day"][3:]) <= 2_000 * 4
    assert result["growth_after_full"] <= 1.1


def test_the_pgbench_reference_fills_every_placeholder_of_the_services_sql() -> None:
    # pgbench runs the service's own statements with values put in: a statement that gains a
    # parameter must gain a value here too, or the reference would not run at all.
    script = ingest.pgbench_script(users=3)
    assert "%(" not in script
    assert "APPLY" not in script  # the SQL itself, not a name for it
    assert script.count("INSERT INTO meetings") >= 2  # booking and cancel
