"""This process's rows in `live_watchers` (DR-57), kept by `keep_registered`: a stream's first
read waits for its user's registration, a user's streams share one, users asking together go
in one call, a failure reaches the streams, and a refresh forgets the users nobody watches here
any more, never racing a registration, and makes the streams of a user whose row was lost
look again."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import pytest

from domain.errors import StorageUnavailable
from entrypoints.live import RECHECK, LiveHub, keep_registered


class Watchers:
    """Records each call; `hold` keeps the next calls waiting until set; `lost` users are
    reported as having had no row at their next registration."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, frozenset[str]]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.fail = False
        self.lost: set[str] = set()

    async def register(self, user_ids: Collection[str]) -> set[str]:
        self.calls.append(("register", frozenset(user_ids)))
        await self.hold.wait()
        if self.fail:
            raise StorageUnavailable("down")
        lost, self.lost = self.lost & set(user_ids), set()
        return lost

    async def refresh(self, user_ids: Collection[str]) -> set[str]:
        self.calls.append(("refresh", frozenset(user_ids)))
        await self.hold.wait()
        lost, self.lost = self.lost & set(user_ids), set()
        return lost

    async def forget(self, user_ids: Collection[str]) -> None:
        self.calls.append(("forget", frozenset(user_ids)))
        await self.hold.wait()

    async def purge(self) -> int:
        self.calls.append(("purge", frozenset()))
        return 0


async def running(hub: LiveHub, watchers: Watchers, every: float = 60.0) -> asyncio.Task[None]:
    task = asyncio.create_task(keep_registered(hub, watchers, every=every))
    await asyncio.sleep(0)  # it takes the hub's registrations over
    return task


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_without_a_registry_a_stream_does_not_wait() -> None:
    hub = LiveHub()
    hub.subscribe("ada")
    await asyncio.wait_for(hub.registered("ada"), 0.1)


async def test_a_first_read_waits_for_the_registration_and_users_asking_together_share_a_call() -> (
    None
):
    hub, watchers = LiveHub(), Watchers()
    task = await running(hub, watchers)
    try:
        watchers.hold.clear()
        for user in ("ada", "ada", "bob"):
            hub.subscribe(user)
        waiting = [asyncio.create_task(hub.registered(u)) for u in ("ada", "ada", "bob")]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiting)  # their reads wait for the registration
        watchers.hold.set()
        await asyncio.wait_for(asyncio.gather(*waiting), 1)
        assert watchers.calls == [("register", frozenset({"ada", "bob"}))]
        await asyncio.wait_for(hub.registered("ada"), 0.1)  # registered: no call again
        assert len(watchers.calls) == 1
    finally:
        await stopped(task)


async def test_a_failed_registration_reaches_the_streams_and_the_next_one_tries_again() -> None:
    hub, watchers = LiveHub(), Watchers()
    task = await running(hub, watchers)
    try:
        hub.subscribe("ada")
        watchers.fail = True
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(hub.registered("ada"), 1)
        watchers.fail = False
        await asyncio.wait_for(hub.registered("ada"), 1)
        assert [c for c, _ in watchers.calls] == ["register", "register"]
    finally:
        await stopped(task)


async def test_a_refresh_forgets_users_gone_keeps_the_rest_and_a_lost_row_makes_streams_look() -> (
    None
):
    hub, watchers = LiveHub(), Watchers()
    task = await running(hub, watchers, every=0.1)
    try:
        ada, bob = hub.subscribe("ada"), hub.subscribe("bob")
        await asyncio.wait_for(asyncio.gather(hub.registered("ada"), hub.registered("bob")), 1)
        hub.unsubscribe("bob", bob)
        watchers.lost = {"ada"}  # purged while this process stalled
        watchers.calls.clear()
        assert await asyncio.wait_for(ada.wait(5), 1) == frozenset({RECHECK})
        assert watchers.calls[:4] == [
            ("forget", frozenset({"bob"})),
            ("refresh", frozenset({"ada"})),
            ("register", frozenset({"ada"})),  # its row was lost: under its lock again
            ("purge", frozenset()),
        ]
    finally:
        await stopped(task)


async def test_a_stream_opening_while_its_user_is_forgotten_waits_for_a_new_registration() -> None:
    hub, watchers = LiveHub(), Watchers()
    task = await running(hub, watchers, every=0.1)
    try:
        first = hub.subscribe("ada")
        await asyncio.wait_for(hub.registered("ada"), 1)
        hub.unsubscribe("ada", first)
        watchers.hold.clear()
        await asyncio.sleep(0.15)  # the refresh began: it forgets ada, and is held
        assert watchers.calls[-1] == ("forget", frozenset({"ada"}))
        hub.subscribe("ada")
        again = asyncio.create_task(hub.registered("ada"))
        await asyncio.sleep(0.05)
        assert not again.done()  # not on the registration being forgotten
        watchers.hold.set()
        await asyncio.wait_for(again, 1)
        forgot = watchers.calls.index(("forget", frozenset({"ada"})))
        assert ("register", frozenset({"ada"})) in watchers.calls[forgot + 1 :]
    finally:
        await stopped(task)


async def test_streams_waiting_when_it_stops_are_told() -> None:
    hub, watchers = LiveHub(), Watchers()
    task = await running(hub, watchers)
    watchers.hold.clear()
    hub.subscribe("ada")
    waiting = asyncio.create_task(hub.registered("ada"))
    await asyncio.sleep(0.05)
    await stopped(task)
    with pytest.raises(StorageUnavailable):
        await asyncio.wait_for(waiting, 1)
    await asyncio.wait_for(hub.registered("ada"), 0.1)  # no registry: nobody waits
