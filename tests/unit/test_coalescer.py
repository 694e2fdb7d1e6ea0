"""The group commit's coalescer (DR-48), without a database: whoever arrives, whenever, each
caller gets its own answer, from exactly one run, within the batch and concurrency limits."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.postgres.group_commit import Coalescer


class Refused(Exception):
    pass


class Runs:
    """A run that answers item * 10 (or Refused for items divisible by 7), after `pauses` turns
    of the event loop, recording what it was given and how many ran at once."""

    def __init__(self, pauses: list[int]) -> None:
        self.pauses = pauses
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0

    async def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        for _ in range(self.pauses[len(self.batches) % len(self.pauses)]):
            await asyncio.sleep(0)
        self.running -= 1
        return [Refused(item) if item % 7 == 0 else item * 10 for item in items]


class FirstHeld:
    """A run that answers each item with itself, the first batch only once `release` is set,
    recording what each run was given."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[list[int]] = []

    async def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.seen.append(list(items))
        if len(self.seen) == 1:
            await self.release.wait()
        return list(items)


@settings(max_examples=200, deadline=None)
@given(
    waves=st.lists(st.integers(1, 30), min_size=1, max_size=8),
    gaps=st.lists(st.integers(0, 4), min_size=1, max_size=8),
    pauses=st.lists(st.integers(0, 5), min_size=1, max_size=5),
    max_batch=st.integers(1, 10),
    max_running=st.integers(1, 4),
    patience=st.sampled_from([None, 0.0, 0.001]),
)
def test_every_caller_gets_its_own_answer_from_exactly_one_run(
    waves: list[int],
    gaps: list[int],
    pauses: list[int],
    max_batch: int,
    max_running: int,
    patience: float | None,
) -> None:
    runs = Runs(pauses)

    async def scenario() -> list[int | BaseException]:
        coalescer: Coalescer[int, int] = Coalescer(
            runs, max_batch=max_batch, max_running=max_running, patience=patience
        )
        callers: list[asyncio.Task[int]] = []
        item = 0
        for n, size in enumerate(waves):  # callers arriving in the same turn, then a gap
            for _ in range(size):
                item += 1
                callers.append(asyncio.create_task(coalescer(item)))
            for _ in range(gaps[n % len(gaps)]):
                await asyncio.sleep(0)
        answers = await asyncio.gather(*callers, return_exceptions=True)
        await coalescer.drain()
        return answers

    # A caller left unanswered would hang the test: it fails here instead, in seconds.
    answers = asyncio.run(asyncio.wait_for(scenario(), timeout=2))
    for item, answer in enumerate(answers, start=1):
        if item % 7 == 0:
            assert isinstance(answer, Refused)
            assert answer.args == (item,)
        else:
            assert answer == item * 10
    taken = sorted(i for batch in runs.batches for i in batch)
    assert taken == list(range(1, len(answers) + 1))  # each item in exactly one run
    assert all(1 <= len(batch) <= max_batch for batch in runs.batches)
    assert runs.most_running <= max_running


async def test_callers_arriving_together_share_runs() -> None:
    runs = Runs([1])
    coalescer: Coalescer[int, int] = Coalescer(runs, max_batch=10, max_running=2)
    answers = await asyncio.gather(*(coalescer(i) for i in range(1, 31)), return_exceptions=True)
    assert len(answers) == 30
    # Two runs start with ten each; the first free one takes the last ten.
    assert [len(batch) for batch in runs.batches] == [10, 10, 10]
    assert runs.most_running == 2


async def test_a_run_cancelled_before_its_first_step_does_not_hold_up_later_callers() -> None:
    """A run's task cancelled from outside before it ever ran (a loop being torn down) no
    longer counts as a run in flight: with one run allowed, later callers still get one."""
    runs = Runs([0])
    coalescer: Coalescer[int, int] = Coalescer(runs, max_running=1)
    first = asyncio.create_task(coalescer(1))
    await asyncio.sleep(0)  # the caller queued its item and created the run's task
    for task in list(coalescer._running):
        task.cancel()
    first.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert await asyncio.wait_for(coalescer(2), timeout=2) == 20


async def test_with_patience_callers_wait_for_the_batch_in_flight_and_go_out_together() -> None:
    """Nobody starts a second run beside a batch that is still young: the callers that arrive
    meanwhile are the next batch, one run for all of them."""
    runs = FirstHeld()
    coalescer: Coalescer[int, int] = Coalescer(runs, max_running=3, patience=60.0)
    first = asyncio.create_task(coalescer(1))
    await asyncio.sleep(0.01)  # the first batch is in flight, alone
    later = [asyncio.create_task(coalescer(i)) for i in range(2, 6)]
    await asyncio.sleep(0.05)
    assert runs.seen == [[1]]  # no run of their own while the first is young
    runs.release.set()
    assert await asyncio.gather(first, *later) == [1, 2, 3, 4, 5]
    assert runs.seen == [[1], [2, 3, 4, 5]]


async def test_more_than_a_batch_waiting_gets_further_runs_without_a_new_caller() -> None:
    """A run that takes a full batch while more wait looks for a further run at once: the
    rest need not wait for another caller to arrive, nor for the run to come round again."""
    runs = Runs([2])
    coalescer: Coalescer[int, int] = Coalescer(runs, max_batch=2, max_running=3, patience=0.0)
    answers = await asyncio.gather(*(coalescer(i) for i in range(1, 7)))
    assert answers == [10, 20, 30, 40, 50, 60]
    assert runs.batches == [[1, 2], [3, 4], [5, 6]]
    assert runs.most_running == 3


async def test_a_batch_that_outlasts_the_patience_holds_up_the_others_no_longer() -> None:
    """A batch stuck (a lock held long elsewhere, a slow connection): the callers waiting
    behind it get a run of their own once it has taken `patience`, and are answered while it
    is still stuck."""
    runs = FirstHeld()
    coalescer: Coalescer[int, int] = Coalescer(runs, max_running=2, patience=0.5)
    first = asyncio.create_task(coalescer(1))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(coalescer(i)) for i in (2, 3)]
    await asyncio.sleep(0.01)
    assert runs.seen == [[1]]
    assert await asyncio.wait_for(asyncio.gather(*waiting), timeout=2) == [2, 3]
    assert runs.seen == [[1], [2, 3]]
    assert not first.done()
    runs.release.set()
    assert await first == 1


async def test_callers_queued_behind_a_run_cancelled_before_its_first_step_get_another() -> None:
    """With patience, callers that arrive while a run is about to start wait for it to take
    them; if that run is cancelled before it ever ran, they get a run of their own, without a
    further caller to prompt one."""
    runs = Runs([0])
    coalescer: Coalescer[int, int] = Coalescer(runs, max_running=3, patience=0.02)
    first = asyncio.create_task(coalescer(1))
    await asyncio.sleep(0)  # the run's task exists, not yet started
    queued = [asyncio.create_task(coalescer(i)) for i in (2, 3)]
    await asyncio.sleep(0)  # they queued behind it
    for task in list(coalescer._running):
        task.cancel()
    first.cancel()
    assert await asyncio.wait_for(asyncio.gather(*queued), timeout=2) == [20, 30]


async def test_a_run_that_raises_answers_each_of_its_callers_with_it() -> None:
    async def broken(items: Sequence[int]) -> list[int | BaseException]:
        raise Refused("the run itself")

    coalescer: Coalescer[int, int] = Coalescer(broken, max_running=1)
    answers = await asyncio.gather(*(coalescer(i) for i in range(3)), return_exceptions=True)
    assert [type(a) for a in answers] == [Refused] * 3


async def test_an_answer_can_come_later_each_on_its_own() -> None:
    """A run may answer futures (a batch that fell back): each caller is answered when its
    own is done, not when the slowest is."""
    gates = {i: asyncio.Event() for i in range(3)}

    async def alone(item: int) -> int:
        await gates[item].wait()
        return item

    async def deferring(items: Sequence[int]) -> list[asyncio.Future[int]]:
        return [asyncio.ensure_future(alone(i)) for i in items]

    coalescer: Coalescer[int, int] = Coalescer(deferring, max_running=1)
    callers = [asyncio.create_task(coalescer(i)) for i in range(3)]
    gates[2].set()
    assert await callers[2] == 2
    assert not callers[0].done()
    assert not callers[1].done()
    gates[0].set()
    gates[1].set()
    assert await asyncio.gather(*callers[:2]) == [0, 1]


async def test_a_caller_that_stopped_waiting_is_left_out_of_later_runs() -> None:
    release = asyncio.Event()
    seen: list[list[int]] = []

    async def slow(items: Sequence[int]) -> list[int | BaseException]:
        seen.append(list(items))
        await release.wait()
        return list(items)

    coalescer: Coalescer[int, int] = Coalescer(slow, max_running=1)
    first = asyncio.create_task(coalescer(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first run has begun, with 1 alone
    gone = asyncio.create_task(coalescer(2))
    kept = asyncio.create_task(coalescer(3))
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    assert await first == 1
    assert await kept == 3
    assert seen == [[1], [3]]


def test_limits_below_one_are_refused() -> None:
    async def run(items: Sequence[int]) -> list[int | BaseException]:
        return list(items)

    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(run, max_batch=0)
    with pytest.raises(ValueError, match="negative"):
        Coalescer(run, patience=-1.0)
