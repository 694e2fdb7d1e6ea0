"""Benchmark 1's CPU accounting (DR-51): what a reading pair says a run used."""

from __future__ import annotations

import pytest

from benchmarks.stack import ENDED, cpu_used


def test_a_process_that_ran_throughout_counts_for_what_it_used_meanwhile() -> None:
    assert cpu_used({10: 1.0, 11: 2.0}, {10: 1.5, 11: 2.25}) == pytest.approx(0.75)


def test_a_process_started_meanwhile_counts_in_full() -> None:
    assert cpu_used({10: 1.0}, {10: 1.5, 12: 0.25}) == pytest.approx(0.75)


def test_a_process_that_ended_meanwhile_counts_for_its_use_after_the_first_reading() -> None:
    # 11 had used 2.0 s, used 0.5 s more and ended: the parent's reaped total went 3.0 -> 5.5.
    before = {10: 1.0, 11: 2.0, ENDED: 3.0}
    after = {10: 1.5, ENDED: 5.5}
    assert cpu_used(before, after) == pytest.approx(0.5 + 0.5)


def test_a_process_started_and_ended_meanwhile_counts_in_full() -> None:
    assert cpu_used({10: 1.0, ENDED: 3.0}, {10: 1.0, ENDED: 3.75}) == pytest.approx(0.75)


def test_without_the_reaped_total_an_ended_process_is_left_out() -> None:
    # Readings of processes nobody reaps here (the service processes).
    assert cpu_used({10: 1.0, 11: 2.0}, {10: 1.5}) == pytest.approx(0.5)


def test_a_run_gets_deliveries_enough_for_the_fastest_rate_seen() -> None:
    from benchmarks.ingest import mix_size

    assert mix_size(10) == 60_000  # 6,000 a second before anything was seen
    assert mix_size(1) == 8_000
    # A warm-up at 4,231/s (a fast hour): 1.6 times what 10 s of it would take.
    assert mix_size(10, 4_231.0) == 67_696
    assert mix_size(10, 1_000.0, 5_000.0) == 80_000
