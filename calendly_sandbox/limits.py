"""Per-user rate limiting, cursor pagination and fault injection: the sandbox's traffic rules."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlencode

import msgspec

from .errors import invalid_argument

T = TypeVar("T")


@dataclass
class Window:
    started: float
    used: int = 0


class RateLimiter:
    """Fixed windows per key, as Calendly's `X-RateLimit-*` headers describe them."""

    def __init__(self) -> None:
        self._windows: dict[str, Window] = {}

    def hit(self, key: str, limit: int, window: float, now: float) -> tuple[bool, int, int]:
        """Count one request; returns (allowed, remaining, seconds until reset)."""
        current = self._windows.get(key)
        if current is None or now - current.started >= window:
            current = Window(started=now)
            self._windows[key] = current
        reset = max(1, math.ceil(current.started + window - now))
        if current.used >= limit:
            return False, 0, reset
        current.used += 1
        return True, limit - current.used, reset

    def clear(self) -> None:
        self._windows.clear()


class Fault(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Make the next `count` calls matching `route` misbehave.

    `route` is `"METHOD /path/template"` as listed by `GET /_sandbox/routes` (for example
    `"POST /oauth/token"` or `"GET /scheduled_events/{uuid}"`), or `"*"` for every API call.
    """

    route: str
    count: int = 1
    status: int | None = None
    latency_ms: int = 0
    # Close the connection without an answer (a connection reset seen by the client).
    reset_connection: bool = False
    # For status 429: the `X-RateLimit-Reset` seconds to announce.
    reset_seconds: int = 1
    body: dict[str, object] | None = None
    id: int = 0


@dataclass
class FaultBook:
    faults: list[Fault] = field(default_factory=list)
    next_id: int = 1

    def add(self, fault: Fault) -> Fault:
        fault.id = self.next_id
        self.next_id += 1
        self.faults.append(fault)
        return fault

    def take(self, route: str) -> Fault | None:
        for fault in self.faults:
            if fault.route in (route, "*") and fault.count > 0:
                fault.count -= 1
                if fault.count == 0:
                    self.faults.remove(fault)
                return fault
        return None


def decode_page_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        padded = token + "=" * (-len(token) % 4)
        offset = int(base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")[2:])
    except (ValueError, binascii.Error, UnicodeError):
        raise invalid_argument("page_token", "is not a valid page token") from None
    if offset < 0:
        raise invalid_argument("page_token", "is not a valid page token")
    return offset


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode("ascii")).rstrip(b"=").decode("ascii")


def parse_count(raw: str | None) -> int:
    if raw is None or raw == "":
        return 20
    try:
        count = int(raw)
    except ValueError:
        raise invalid_argument("count", "must be an integer between 1 and 100") from None
    if not 1 <= count <= 100:
        raise invalid_argument("count", "must be an integer between 1 and 100")
    return count


def paginate(
    items: Sequence[T], query: dict[str, str], url: str
) -> tuple[Sequence[T], dict[str, object]]:
    """Cut one page out of `items`; `url` is the request URL without a query string."""
    count = parse_count(query.get("count"))
    offset = decode_page_token(query.get("page_token"))
    page = items[offset : offset + count]

    def link(token: str | None) -> str | None:
        if token is None:
            return None
        params = {k: v for k, v in query.items() if k != "page_token"}
        params["page_token"] = token
        return f"{url}?{urlencode(params)}"

    next_token = encode_page_token(offset + count) if offset + count < len(items) else None
    previous_token = encode_page_token(max(0, offset - count)) if offset > 0 else None
    return page, {
        "count": len(page),
        "next_page": link(next_token),
        "previous_page": link(previous_token),
        "next_page_token": next_token,
        "previous_page_token": previous_token,
    }
