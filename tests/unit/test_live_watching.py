"""The marker of watched free-plan users (DR-42): one call per tick for every polled user
watching in the process, at once for a newcomer, nothing when no one polled watches."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import StorageUnavailable
from entrypoints.live import TIMER_GRID, LiveHub, _on_grid, mark_watched


class Marks:
    def __init__(self) -> None:
        self.calls: list[frozenset[str]] = []

    async def __call__(self, users: Collection[str]) -> int:
        self.calls.append(frozenset(users))
        return len(users)


async def test_every_tick_marks_all_polled_watchers_in_one_call() -> None:
    hub, marks = LiveHub(), Marks()
    for n in range(100):
        hub.subscribe(f"user{n}")
        hub.polled(f"user{n}", n % 2 == 0)  # the odd ones have webhooks
    hub.subscribe("unknown")
    hub.take_newly_polled()  # as if already marked at their streams' start
    marker = asyncio.create_task(mark_watched(hub, marks, every=0.05, settle=0.01))
    await asyncio.sleep(0.12)
    marker.cancel()
    await asyncio.gather(marker, return_exceptions=True)
    assert 1 <= len(marks.calls) <= 3
    assert all(call == {f"user{n}" for n in range(0, 100, 2)} for call in marks.calls)


async def test_a_newcomer_is_marked_at_once_and_no_one_after_the_last_stream() -> None:
    hub, marks = LiveHub(), Marks()
    marker = asyncio.create_task(mark_watched(hub, marks, every=3600, settle=0.01))
    await asyncio.sleep(0.02)
    assert marks.calls == []  # no one watches: no statement
    queue = hub.subscribe("fred")
    hub.polled("fred", True)
    await asyncio.sleep(0.05)
    assert marks.calls == [{"fred"}]
    hub.polled("fred", False)  # upgraded: webhooks now
    hub.polled("fred", True)  # and back
    hub.unsubscribe("fred", queue)
    hub.polled("fred", True)  # a late read of a closed stream does not bring it back
    await asyncio.sleep(0.05)
    assert marks.calls == [{"fred"}]
    assert hub.polled_users() == frozenset()
    marker.cancel()
    await asyncio.gather(marker, return_exceptions=True)


async def test_a_failed_mark_is_tried_again_at_the_next_tick() -> None:
    hub, calls = LiveHub(), []

    async def failing(users: Collection[str]) -> int:
        calls.append(set(users))
        raise OSError("the database is away")

    hub.subscribe("fred")
    hub.polled("fred", True)
    marker = asyncio.create_task(mark_watched(hub, failing, every=0.05, settle=0.01))
    await asyncio.sleep(0.15)
    marker.cancel()
    await asyncio.gather(marker, return_exceptions=True)
    assert len(calls) >= 2


async def test_pages_opened_together_have_their_grants_checked_in_one_call() -> None:
    hub, marks, checks = LiveHub(), Marks(), Marks()
    marker = asyncio.create_task(mark_watched(hub, marks, check=checks, every=3600, settle=0.01))
    for user in ("ann", "ben"):
        hub.subscribe(user)
        hub.opened(user)
    hub.opened("nobody-streaming")  # a stream already gone: nothing to check
    await asyncio.sleep(0.05)
    assert checks.calls == [{"ann", "ben"}]
    assert marks.calls == []  # paid users: no polling asked
    marker.cancel()
    await asyncio.gather(marker, return_exceptions=True)


# ------------------------------------------------------------- one read for a user's streams
async def test_streams_woken_together_share_one_read() -> None:
    """A user's streams here, woken by one doorbell, read once (issue 17)."""
    hub = LiveHub()
    hub.subscribe("u")
    gate = asyncio.Event()
    reads: list[int] = []

    async def read() -> str:
        reads.append(1)
        await gate.wait()
        return "changes"

    callers = [asyncio.create_task(hub.shared("u", 7, read)) for _ in range(5)]
    await asyncio.sleep(0)
    hub.ring("meetings", "someone-else")  # another user's doorbell changes nothing here
    late = asyncio.create_task(hub.shared("u", 7, read))
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*callers, late) == ["changes"] * 6
    assert len(reads) == 1
    assert hub.reads == 1


@pytest.mark.parametrize("doorbell", [("meetings", "u"), (None, None)])
async def test_a_read_that_began_before_a_doorbell_is_not_shared_after_it(
    doorbell: tuple[str | None, str | None],
) -> None:
    """It may not see the change that doorbell announced: whoever it woke reads again."""
    hub = LiveHub()
    hub.subscribe("u")
    gate = asyncio.Event()
    answers = iter(["before", "after"])

    async def read() -> str:
        answer = next(answers)
        await gate.wait()
        return answer

    first = asyncio.create_task(hub.shared("u", 7, read))
    await asyncio.sleep(0)
    hub.ring(*doorbell)
    second = asyncio.create_task(hub.shared("u", 7, read))
    await asyncio.sleep(0)
    gate.set()
    assert [await first, await second] == ["before", "after"]
    assert hub.reads == 2


async def test_a_shared_reads_failure_reaches_each_of_its_callers() -> None:
    hub = LiveHub()

    async def read() -> str:
        await asyncio.sleep(0)
        raise StorageUnavailable("down")

    answers = await asyncio.gather(
        hub.shared("u", None, read), hub.shared("u", None, read), return_exceptions=True
    )
    assert [type(a) for a in answers] == [StorageUnavailable, StorageUnavailable]
    assert hub.reads == 1


async def test_a_read_begun_before_the_users_streams_all_closed_is_not_shared_after() -> None:
    """The user's doorbell count starts again when the last stream closes: a stream that
    opens next must not join a read that began before a change it was never rung for."""
    hub = LiveHub()
    first_queue = hub.subscribe("u")
    gate = asyncio.Event()
    answers = iter(["stale", "fresh"])

    async def read() -> str:
        answer = next(answers)
        await gate.wait()
        return answer

    old = asyncio.create_task(hub.shared("u", 7, read))
    await asyncio.sleep(0)
    hub.ring("meetings", "u")  # a change after the read began ...
    hub.unsubscribe("u", first_queue)  # ... and the page reconnects
    hub.subscribe("u")
    new = asyncio.create_task(hub.shared("u", 7, read))
    await asyncio.sleep(0)
    gate.set()
    assert [await old, await new] == ["stale", "fresh"]


async def test_a_doorbell_says_what_rang_or_nothing_when_its_wait_times_out() -> None:
    """The stream's heartbeat rests on this: an empty set once the wait timed out with nothing
    rung; what rang (each kind once) as soon as something did; nothing kept between waits."""
    hub = LiveHub()
    doorbell = hub.subscribe("alice")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await doorbell.wait(0.4) == frozenset()
    assert loop.time() - started >= 0.4 - TIMER_GRID  # on the grid: a step early at most
    started = loop.time()
    assert await doorbell.wait(0.05, exact=True) == frozenset()
    assert loop.time() - started >= 0.05  # exactly when asked (a token's end)
    hub.ring("meetings", "alice")
    hub.ring("meetings", "alice")
    hub.ring("connection", "alice")
    assert await doorbell.wait(5) == {"meetings", "connection"}  # rung before: no wait at all
    waiting = asyncio.create_task(doorbell.wait(30))
    await asyncio.sleep(0.01)
    hub.ring("meetings", "alice")
    assert await asyncio.wait_for(waiting, 1) == {"meetings"}  # woken at once, not at 30 s
    assert await doorbell.wait(0.01) == frozenset()
    waiting = asyncio.create_task(doorbell.wait(30))
    await asyncio.sleep(0.01)
    waiting.cancel()  # the page went away mid-wait
    with pytest.raises(asyncio.CancelledError):
        await waiting
    hub.ring("meetings", "alice")  # no waiter left to wake: no error
    assert await doorbell.wait(0.01) == {"meetings"}


@given(
    now=st.floats(min_value=0, max_value=1e7, allow_nan=False),
    at_most=st.floats(min_value=-1, max_value=60, allow_nan=False),
)
def test_a_doorbells_timer_is_due_on_the_grid_and_never_later_than_asked(
    now: float, at_most: float
) -> None:
    """Timers of many streams fall due together (one wake of the loop for all): each on the
    grid when a grid point lies within what was asked, else exactly when asked; never later
    (a heartbeat must not come late), never more than one grid step early."""
    due = _on_grid(now, at_most)
    assert due <= now + at_most
    if at_most > TIMER_GRID:
        assert due > now
        assert now + at_most - due < TIMER_GRID + 1e-6 * max(1.0, now)
        assert abs(due / TIMER_GRID - round(due / TIMER_GRID)) < 1e-6
    else:
        assert due > now or due == now + at_most
