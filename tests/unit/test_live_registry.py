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
from entrypoints.live import RECHECK, Doorbell, LiveHub, keep_registered


class Watchers:
    """Records each call; `hold` keeps the next row writes waiting until set; `lost` users are
    reported missing at the next refresh; `busy` users have a write under way, which ends
    when `writes_end` is set (or never, with `writes_fail`)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, frozenset[str]]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.fail = False
        self.lost: set[str] = set()
        self.busy_users: set[str] = set()
        self.writes_end = asyncio.Event()
        self.writes_fail = False
        self.purged = asyncio.Event()  # set at each purge: a refresh ran to its end

    async def add(self, user_ids: Collection[str]) -> None:
        self.calls.append(("add", frozenset(user_ids)))
        await self.hold.wait()
        if self.fail:
            raise StorageUnavailable("down")

    async def busy(self, user_ids: Collection[str]) -> set[str]:
        self.calls.append(("busy", frozenset(user_ids)))
        return self.busy_users & set(user_ids)

    async def wait_for_writes(self, user_id: str) -> None:
        self.calls.append(("wait", frozenset({user_id})))
        await self.writes_end.wait()
        if self.writes_fail:
            raise StorageUnavailable("a write is still under way")

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
        self.purged.set()
        return 0


async def running(hub: LiveHub, watchers: Watchers, every: float = 60.0) -> asyncio.Task[None]:
    task = asyncio.create_task(keep_registered(hub, watchers, every=every))
    await asyncio.sleep(0)  # it takes the hub's registrations over
    return task


async def registered_stream(hub: LiveHub, user_id: str) -> Doorbell:
    """A stream of `user_id` opened, once its registration is done."""
    doorbell = hub.subscribe(user_id)
    await asyncio.wait_for(hub.registered(user_id), 1)
    return doorbell


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
        assert watchers.calls == [
            ("add", frozenset({"ada", "bob"})),
            ("busy", frozenset({"ada", "bob"})),
        ]
        await asyncio.wait_for(hub.registered("ada"), 0.1)  # registered: no call again
        assert len(watchers.calls) == 2
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
        assert [c for c, _ in watchers.calls] == ["add", "add", "busy"]
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
        assert watchers.calls[:5] == [
            ("forget", frozenset({"bob"})),
            ("refresh", frozenset({"ada"})),
            ("add", frozenset({"ada"})),  # its row was lost: registered again
            ("busy", frozenset({"ada"})),
            ("purge", frozenset()),
        ]
    finally:
        await stopped(task)


async def test_a_stream_opening_while_its_user_is_forgotten_waits_for_a_new_registration() -> None:
    hub, watchers = LiveHub(), Watchers()
    task = await running(hub, watchers, every=0.1)
    try:
        first = await registered_stream(hub, "ada")
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
        assert ("add", frozenset({"ada"})) in watchers.calls[forgot + 1 :]
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


async def test_a_user_with_a_write_under_way_holds_up_only_its_own_streams() -> None:
    """A registration waits for its user's write under way (a batch, or a token refresh that
    holds the user's lock for seconds) apart: the other users' streams go on at once."""
    hub, watchers = LiveHub(), Watchers()
    watchers.busy_users = {"ada"}
    task = await running(hub, watchers)
    try:
        hub.subscribe("ada")
        hub.subscribe("bob")
        ada = asyncio.create_task(hub.registered("ada"))
        await asyncio.wait_for(hub.registered("bob"), 1)
        assert not ada.done()
        hub.subscribe("cy")  # and a newcomer meanwhile
        await asyncio.wait_for(hub.registered("cy"), 1)
        assert not ada.done()
        watchers.writes_end.set()
        await asyncio.wait_for(ada, 1)
        assert ("wait", frozenset({"ada"})) in watchers.calls
    finally:
        await stopped(task)


async def test_a_write_that_does_not_end_ends_that_users_streams_only() -> None:
    hub, watchers = LiveHub(), Watchers()
    watchers.busy_users = {"ada"}
    watchers.writes_fail = True
    watchers.writes_end.set()
    task = await running(hub, watchers)
    try:
        hub.subscribe("ada")
        hub.subscribe("bob")
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(hub.registered("ada"), 1)
        await asyncio.wait_for(hub.registered("bob"), 1)
    finally:
        await stopped(task)


async def test_a_streams_first_read_comes_after_its_users_registration() -> None:
    """routes/live.py: the stream reads nothing (not even where to start from) before this
    process is registered for the user; a write meanwhile would otherwise ring nobody."""
    from typing import cast

    from domain.usecases.queries import Changes
    from entrypoints.service.http.routes.live import _Deadline, _stream
    from entrypoints.services import Services

    hub = LiveHub()
    hub.registry = True  # registrations are ended by hand below
    reads: list[int | None] = []

    class Reads:
        live_hub = hub

        async def meeting_changes(self, user_id: str, after: int | None) -> Changes:
            reads.append(after)
            return Changes(meetings=(), cursor=7, more=False)

    events = _stream(cast(Services, Reads()), "ada", None, _Deadline(None))
    first = asyncio.create_task(anext(events))
    await asyncio.sleep(0.05)
    assert reads == []
    assert not first.done()
    hub.registration_done(["ada"], None)
    ready = await asyncio.wait_for(first, 1)
    assert ready.event == "ready"
    assert reads == [None]
    await events.aclose()


async def test_a_lost_user_with_a_write_under_way_looks_after_it_and_holds_up_nobody() -> None:
    """A user whose row was lost, with a write under way when it is registered again: its
    streams look once that write ended, and the refresh goes on meanwhile, so a newcomer's
    registration waits for neither."""
    hub, watchers = LiveHub(), Watchers()
    task = await running(hub, watchers, every=0.1)
    try:
        ada = await registered_stream(hub, "ada")
        watchers.busy_users = {"ada"}
        watchers.lost = {"ada"}  # purged while this process stalled
        watchers.calls.clear()
        watchers.purged.clear()
        # The refresh runs to its end (the purge) while ada's write is still under way.
        await asyncio.wait_for(watchers.purged.wait(), 1)
        assert ("wait", frozenset({"ada"})) in watchers.calls
        hub.subscribe("bob")
        await asyncio.wait_for(hub.registered("bob"), 1)
        looked = asyncio.create_task(ada.wait(5))
        await asyncio.sleep(0.05)
        assert not looked.done()  # not before the write ended
        watchers.writes_end.set()
        assert await asyncio.wait_for(looked, 1) == frozenset({RECHECK})
    finally:
        await stopped(task)


async def test_a_lost_user_whose_write_does_not_end_looks_all_the_same() -> None:
    hub, watchers = LiveHub(), Watchers()
    task = await running(hub, watchers, every=0.1)
    try:
        ada = await registered_stream(hub, "ada")
        watchers.busy_users = {"ada"}
        watchers.writes_fail = True
        watchers.writes_end.set()
        watchers.lost = {"ada"}
        assert await asyncio.wait_for(ada.wait(5), 1) == frozenset({RECHECK})
        assert ("wait", frozenset({"ada"})) in watchers.calls
    finally:
        await stopped(task)
