"""Benchmark 2's figure for what open streams cost ingest (DR-56): runs with the streams open,
each set against the runs without them either side, so that a machine whose speed drifts
during the benchmark is not read as a cost of the streams."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.live import interleaved_cost


def runs(*rates: float, broken: int | None = None) -> list[tuple[bool, dict[str, Any]]]:
    return [
        (n % 2 == 1, {"rate": rate, "ok": n != broken, "problems": []})
        for n, rate in enumerate(rates)
    ]


def test_each_run_with_the_streams_is_set_against_its_neighbours_without() -> None:
    cost = interleaved_cost(runs(100, 90, 110, 95, 100, 100, 100))
    assert cost["ratios"] == pytest.approx([90 / 105, 95 / 105, 1.0])
    assert cost["ratio"] == pytest.approx(95 / 105)
    assert cost["with_streams"] == 95
    assert cost["without_streams"] == 100
    assert cost["ok"]
    assert list(cost["runs"]) == [
        "without_1", "with_1", "without_2", "with_2", "without_3", "with_3", "without_4"
    ]  # fmt: skip


def test_a_machine_slowing_down_steadily_is_no_cost_of_the_streams() -> None:
    # Every run 10 % slower than the one before, the streams costing nothing: all the runs
    # without first, then all the runs with, would have said they cost about a quarter.
    cost = interleaved_cost(runs(100, 90, 80, 70, 60))
    assert cost["ratios"] == pytest.approx([1.0, 1.0])
    assert cost["ratio"] == pytest.approx(1.0)


def test_a_real_cost_is_seen_whatever_the_drift() -> None:
    # The streams take a fifth while the machine speeds up.
    cost = interleaved_cost(runs(100, 0.8 * 110, 120, 0.8 * 130, 140))
    assert cost["ratio"] == pytest.approx(0.8)


def test_one_wrong_run_makes_the_figure_wrong() -> None:
    assert not interleaved_cost(runs(100, 90, 100, broken=1))["ok"]


@pytest.mark.parametrize(
    "order",
    [
        [(False, {"rate": 1.0, "ok": True})],  # nothing with the streams
        [(False, {"rate": 1.0, "ok": True}), (True, {"rate": 1.0, "ok": True})],  # none after
        [(True, {"rate": 1.0, "ok": True}), (False, {"rate": 1.0, "ok": True})] * 2,
        [(False, {"rate": 1.0, "ok": True}), (True, {"rate": 1.0, "ok": True})] * 2
        + [(True, {"rate": 1.0, "ok": True})],  # two with in a row
    ],
)
def test_runs_out_of_turn_are_refused(order: list[tuple[bool, dict[str, Any]]]) -> None:
    with pytest.raises(ValueError, match="alternate"):
        interleaved_cost(order)
