"""Erasure over fakes: no live grant is ever dropped unrevoked, whatever the user does meanwhile."""

from __future__ import annotations

import pytest

from domain.errors import ConcurrentUpdate
from domain.usecases.disconnect import DisconnectCommand, DisconnectResult
from domain.usecases.erase_user import EraseUser
from tests.fakes.calendly import FakeUser
from tests.support.core import Core, build_core


class ReconnectingMeanwhile:
    """The real Disconnect, after which the user connects again the first `times` times."""

    def __init__(self, core: Core, host: FakeUser, times: int) -> None:
        self._core, self._host, self._times = core, host, times
        self.calls = 0

    async def __call__(self, command: DisconnectCommand) -> DisconnectResult:
        result = await self._core.disconnect(command)
        self.calls += 1
        if self.calls <= self._times:
            await self._core.connect(command.user_id, self._host)
        return result


async def test_a_user_who_connects_again_meanwhile_is_disconnected_again_first() -> None:
    core = build_core()
    host = core.calendly.add_user("alice@example.com")
    await core.connect("alice", host)
    disconnect = ReconnectingMeanwhile(core, host, times=1)

    result = await EraseUser(core.db.factory(), disconnect)("alice")

    assert disconnect.calls == 2
    assert core.calendly.count("revoke") == 2  # both grants
    assert core.calendly.active_subscriptions(host) == []
    assert "alice" not in core.db.connections
    assert result.erased.connections == 1
    assert result.disconnect.already_disconnected is False


async def test_a_user_who_keeps_connecting_again_is_not_erased_half() -> None:
    core = build_core()
    host = core.calendly.add_user("alice@example.com")
    await core.connect("alice", host)
    disconnect = ReconnectingMeanwhile(core, host, times=99)

    with pytest.raises(ConcurrentUpdate):
        await EraseUser(core.db.factory(), disconnect)("alice")

    assert "alice" in core.db.connections  # nothing deleted


async def test_an_erasure_is_idempotent() -> None:
    core = build_core()
    await core.connect("alice", core.calendly.add_user("alice@example.com"))

    first = await core.erase_user("alice")
    second = await core.erase_user("alice")

    assert first.erased.connections == 1
    assert second.disconnect.already_disconnected is True
    assert second.erased.connections == 0
    assert core.calendly.count("revoke") == 1
