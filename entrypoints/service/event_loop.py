"""The event loop the long-running processes run on."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


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
