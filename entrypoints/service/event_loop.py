"""The event loop the long-running processes run on, and how they hear Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_fast(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop where it exists, else on asyncio's own loop.

    With httptools, uvloop takes about a fifth off the CPU time of a webhook delivery
    (ARCHITECTURE.md, DR-18); the host webhooks' dispatcher, mostly HTTP client calls and
    small queries, gains alike. Everything else is unchanged.
    """
    try:
        import uvloop
    except ImportError:  # a platform uvloop does not support (Windows)
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


@contextlib.contextmanager
def stopped_by_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` inside the block; the handlers from before come back when
    it ends, whatever ends it.

    They must be taken back while the loop still runs. asyncio's own loop, closing, shuts its
    wake-up pipe before it removes its handlers, and a signal in between (an impatient second
    Ctrl-C) printed "Exception ignored when trying to write to the signal wakeup fd" with a
    traceback. The block should hold the process's own clean-up too, so that a second signal
    during it is heard as the first was. After the block a late signal goes to the handler
    from before (for SIGINT usually KeyboardInterrupt, which each `main` answers quietly; an
    ignored signal stays ignored). Where the loop cannot take signals (not the main thread, or
    Windows), nothing is set.
    """
    loop = asyncio.get_running_loop()
    handled: dict[signal.Signals, Any] = {}
    for sig in STOP_SIGNALS:
        before = signal.getsignal(sig)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled[sig] = before
    try:
        yield
    finally:
        for sig, before in handled.items():
            loop.remove_signal_handler(sig)  # (which sets the default handler)
            if before is not None:
                signal.signal(sig, before)
