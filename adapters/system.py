"""The real clock and the operating system's randomness."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime

from domain.ports import Clock, Randomness


class SystemClock(Clock):
    def now(self) -> datetime:
        return datetime.now(tz=UTC)


class SecretsRandomness(Randomness):
    """`secrets` (a CSPRNG) for states, verifiers, keys and callback tokens."""

    def token(self, nbytes: int = 32) -> str:
        return secrets.token_urlsafe(nbytes)

    def uuid(self) -> str:
        return str(uuid.uuid4())
