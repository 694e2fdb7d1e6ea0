"""The marker of watched free-plan users (DR-42): one call per tick for every polled user
watching in the process, at once for a newcomer, nothing when no one polled watches."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from entrypoints.live import LiveHub, mark_watched


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
