"""GroupCommit (entrypoints/service/host_webhooks.py): the host webhooks' dispatcher settles the
streams that finished meanwhile in one statement; these pin down how callers are grouped."""

from __future__ import annotations

import asyncio

import pytest

from entrypoints.service.host_webhooks import GroupCommit


class Writes:
    def __init__(self, pause: float = 0.0, fail_first: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.pause = pause
        self.fail_first = fail_first

    async def __call__(self, items: list[int]) -> int:
        self.batches.append(items)
        await asyncio.sleep(self.pause)
        if self.fail_first and len(self.batches) == 1:
            raise RuntimeError("the database went away")
        return sum(items)


async def test_callers_arriving_together_are_written_once_and_each_gets_the_result() -> None:
    writes = Writes()
    commit = GroupCommit(writes)
    results = await asyncio.gather(*(commit(n) for n in range(5)))
    assert writes.batches == [[0, 1, 2, 3, 4]]
    assert results == [10] * 5


async def test_callers_arriving_during_a_write_go_together_in_the_next_one() -> None:
    writes = Writes(pause=0.05)
    commit = GroupCommit(writes)
    first = asyncio.ensure_future(commit(1))
    await asyncio.sleep(0.01)  # the first write is under way
    later = await asyncio.gather(commit(2), commit(3))
    assert await first == 1
    assert list(later) == [5, 5]
    assert writes.batches == [[1], [2, 3]]


async def test_a_linger_gathers_callers_that_come_a_moment_apart() -> None:
    writes = Writes()
    commit = GroupCommit(writes, linger=0.05)

    async def after(delay: float, n: int) -> int:
        await asyncio.sleep(delay)
        return await commit(n)

    await asyncio.gather(after(0, 1), after(0.01, 2), after(0.02, 3))
    assert writes.batches == [[1, 2, 3]]


async def test_a_failed_write_reaches_each_of_its_callers_and_the_next_batch_still_goes() -> None:
    writes = Writes(pause=0.02, fail_first=True)
    commit = GroupCommit(writes)
    failed = [asyncio.ensure_future(commit(n)) for n in (1, 2)]
    await asyncio.sleep(0.005)
    later = asyncio.ensure_future(commit(3))
    for future in failed:
        with pytest.raises(RuntimeError, match="went away"):
            await future
    assert await later == 3
    assert writes.batches == [[1, 2], [3]]


async def test_a_caller_that_gives_up_does_not_break_the_others() -> None:
    writes = Writes(pause=0.02)
    commit = GroupCommit(writes)
    quitter = asyncio.ensure_future(commit(1))
    stayer = asyncio.ensure_future(commit(2))
    await asyncio.sleep(0.005)
    quitter.cancel()
    assert await stayer == 3
