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
    """SIGINT and SIGTERM set `stop` inside the block; taken back when it ends, whatever ends it.

    They must be taken back while the loop still runs. asyncio's own loop, closing, shuts its
    wake-up pipe before it removes the handlers, and a signal in between (an impatient second
    Ctrl-C) printed "Exception ignored when trying to write to the signal wakeup fd" with a
    traceback. Once taken back, a late signal goes to the handler from before (KeyboardInterrupt
    for SIGINT, which each `main` answers quietly). Where the loop cannot take signals (not the
    main thread, or Windows), nothing is set.
    """
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
