"""What one running sandbox holds: its world, deliverer, limits, faults and call log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .delivery import Deliverer
from .limits import FaultBook, RateLimiter
from .model import iso
from .world import World


@dataclass
class Call:
    seq: int
    at: float
    method: str
    path: str
    route: str
    status: int
    user_id: str | None

    def to_json(self, world: World) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": iso(self.at),
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "status": self.status,
            "user": world.user_uri(self.user_id) if self.user_id else None,
        }


@dataclass
class Sandbox:
    world: World
    deliverer: Deliverer
    limiter: RateLimiter = field(default_factory=RateLimiter)
    faults: FaultBook = field(default_factory=FaultBook)
    calls: list[Call] = field(default_factory=list)


SANDBOX = web.AppKey("sandbox", Sandbox)
# Who made the request (for the call log), and the rate-limit headers its answer carries.
SANDBOX_USER = web.RequestKey("sandbox_user", str)
RATE_HEADERS = web.RequestKey("rate_headers", dict[str, str])
