"""A clock that stands still until told, and randomness that repeats."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

from domain.ports import Clock, Randomness


class FixedClock(Clock):
    def __init__(self, at: datetime | None = None) -> None:
        self._now = at or datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | float) -> None:
        self._now += delta if isinstance(delta, timedelta) else timedelta(seconds=delta)


class CountingRandomness(Randomness):
    """Distinct, readable values: `tok-1-...`, and UUIDs derived from a counter."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def token(self, nbytes: int = 32) -> str:
        n = next(self._counter)
        return f"tok{n}-" + "x" * max(0, nbytes - 6)

    def uuid(self) -> str:
        return str(uuid.UUID(int=next(self._counter)))
