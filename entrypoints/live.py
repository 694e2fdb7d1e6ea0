"""Fan-out of change doorbells to the event streams open in this process."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

RECHECK = "recheck"
# Rung once when the process stops: every open stream ends at once, cleanly (its page
# reconnects to a sibling process and resumes), instead of being cancelled mid-wait.
CLOSING = "closing"


class LiveHub:
    """Per user, the queues of that user's open streams; a full queue already rings."""

    def __init__(self, queue_size: int = 8) -> None:
        self._streams: dict[str, set[asyncio.Queue[str]]] = defaultdict(set)
        self._queue_size = queue_size
        self._closing = False

    def subscribe(self, user_id: str) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(self._queue_size)
        self._streams[user_id].add(queue)
        return queue

    def unsubscribe(self, user_id: str, queue: asyncio.Queue[str]) -> None:
        streams = self._streams.get(user_id)
        if streams is not None:
            streams.discard(queue)
            if not streams:
                del self._streams[user_id]

    def ring(self, kind: str | None, user_id: str | None) -> None:
        """A change of `kind` for `user_id`; (None, None) asks every stream to re-check."""
        if user_id is None:
            targets = [q for queues in self._streams.values() for q in queues]
            kind = RECHECK
        else:
            targets = list(self._streams.get(user_id, ()))
        for queue in targets:
            # A full queue has a doorbell waiting already; one more would add nothing.
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(kind or RECHECK)

    @property
    def closing(self) -> bool:
        """True once `close()` was called: streams end instead of waiting for changes."""
        return self._closing

    def close(self) -> None:
        """Ask every open stream to end (the process is stopping)."""
        self._closing = True
        for queue in [q for queues in self._streams.values() for q in queues]:
            # A full queue wakes its stream anyway, which then sees `closing`.
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(CLOSING)

    @property
    def open_streams(self) -> int:
        return sum(len(q) for q in self._streams.values())
