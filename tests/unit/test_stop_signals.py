"""The asyncio processes (worker, host webhooks' dispatcher, sandbox) take their signal handlers
back before their loop closes: asyncio's loop, closing, shuts its wake-up pipe before it removes
them, and a second Ctrl-C in between printed "Exception ignored when trying to write to the
signal wakeup fd" with a traceback (seen in CI, from the dev stack's Ctrl-C test)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import calendly_sandbox.app
from entrypoints.service.event_loop import stopped_by_signals


class _Recording(asyncio.SelectorEventLoop):
    """A loop that notes, as it closes, whether a signal's wake-up still points at its pipe."""

    wakeup_left_at_close: int | None = None

    def close(self) -> None:
        if not self.is_closed():
            left = signal.set_wakeup_fd(-1)
            signal.set_wakeup_fd(left)  # as it was: the close below does the rest
            self.wakeup_left_at_close = left
        super().close()


def _run(main: Coroutine[Any, Any, Any]) -> tuple[Any, _Recording]:
    loops: list[_Recording] = []

    def factory() -> _Recording:
        loops.append(_Recording())
        return loops[0]

    with asyncio.Runner(loop_factory=factory) as runner:
        answer = runner.run(main)
    return answer, loops[0]


@pytest.fixture(autouse=True)
def _handlers_restored() -> Any:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_a_signal_in_the_block_sets_stop_and_nothing_is_left_at_close() -> None:
    async def main() -> bool:
        stop = asyncio.Event()
        with stopped_by_signals(stop):
            signal.raise_signal(signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), 5)
        return stop.is_set()

    def own(signum: int, frame: object) -> None:
        raise AssertionError("the handler from before, heard inside the block")

    signal.signal(signal.SIGTERM, own)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job of a shell script
    stopped, loop = _run(main())
    assert stopped
    assert loop.wakeup_left_at_close == -1
    # The handlers from before come back (asyncio alone would leave the defaults).
    assert signal.getsignal(signal.SIGTERM) is own
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_the_handlers_are_taken_back_when_the_block_raises() -> None:
    async def main() -> str:
        try:
            with stopped_by_signals(asyncio.Event()):
                raise LookupError("the process's own trouble")
        except LookupError as exc:
            return str(exc)

    def own(signum: int, frame: object) -> None:
        raise AssertionError("the handler from before, heard inside the block")

    signal.signal(signal.SIGINT, own)  # known, whatever an earlier test left
    raised, loop = _run(main())
    assert raised == "the process's own trouble"
    assert loop.wakeup_left_at_close == -1
    assert signal.getsignal(signal.SIGINT) is own


def _interrupt_once_handled(previous: Callable[..., Any] | int | None) -> threading.Thread:
    """A thread that sends SIGINT once the process's handler is no longer `previous`."""

    def send() -> None:
        deadline = time.monotonic() + 20
        while signal.getsignal(signal.SIGINT) == previous and time.monotonic() < deadline:
            time.sleep(0.02)
        signal.raise_signal(signal.SIGINT)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_the_sandbox_takes_its_handlers_back_before_its_loop_closes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    loops: list[_Recording] = []

    def run(main: Coroutine[Any, Any, int]) -> int:
        answer, loop = _run(main)
        loops.append(loop)
        return int(answer)

    monkeypatch.setattr(asyncio, "run", run)  # the sandbox calls asyncio.run
    sender = _interrupt_once_handled(signal.getsignal(signal.SIGINT))
    assert calendly_sandbox.app.main(["--host", "127.0.0.1", "--port", "0"]) == 0
    sender.join(5)
    assert "listening on" in capsys.readouterr().out
    assert [loop.wakeup_left_at_close for loop in loops] == [-1]
