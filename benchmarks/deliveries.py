"""Calendly deliveries as Calendly sends them, signed with each connection's own key, and the
mixes the benchmarks post (new bookings, exact duplicates, cancels) with what they must leave
in the database.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from benchmarks.stack import User

BASE = "https://api.calendly.test"
Kind = Literal["book", "dup", "cancel"]


def sign(body: bytes, key: str, timestamp: int) -> str:
    mac = hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def body_for(user: User, event_id: str, invitee_id: str, *, canceled: bool) -> bytes:
    """An `invitee.created` / `invitee.canceled` delivery in the current (2022+) shape."""
    event_uri = f"{BASE}/scheduled_events/{event_id}"
    status = "canceled" if canceled else "active"
    payload: dict[str, object] = {
        "uri": f"{event_uri}/invitees/{invitee_id}",
        "event": event_uri,
        "email": f"{invitee_id}@guest.example",
        "name": f"Guest {invitee_id}",
        "status": status,
        "timezone": "Europe/Berlin",
        "rescheduled": False,
        "old_invitee": None,
        "new_invitee": None,
        "no_show": None,
        "questions_and_answers": [{"question": "Topic?", "answer": "Quarterly planning"}],
        "created_at": "2030-03-01T10:04:59.812000Z",
        "updated_at": "2030-03-01T10:04:59.812000Z",
        "scheduled_event": {
            "uri": event_uri,
            "name": "30 Minute Meeting",
            "status": status,
            "start_time": "2030-03-05T14:30:00.000000Z",
            "end_time": "2030-03-05T15:00:00.000000Z",
            "event_type": f"{BASE}/event_types/bench",
            "location": {"type": "zoom", "join_url": "https://zoom.example/j/1"},
            "invitees_counter": {"total": 1, "active": 0 if canceled else 1, "limit": 1},
            "event_memberships": [{"user": user.calendly_user_uri, "user_email": "h@x.example"}],
            "event_guests": [],
            "created_at": "2030-03-01T10:04:59.790000Z",
            "updated_at": "2030-03-01T10:04:59.790000Z",
        },
    }
    if canceled:
        payload["cancellation"] = {
            "canceled_by": "Guest",
            "reason": "conflict",
            "canceler_type": "invitee",
            "created_at": "2030-03-02T10:00:00.000000Z",
        }
    envelope = {
        "event": "invitee.canceled" if canceled else "invitee.created",
        "created_at": "2030-03-01T10:05:00.000000Z",
        "created_by": user.calendly_user_uri,
        "payload": payload,
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def raw_request(host: str, path: str, body: bytes, signature: str, request_id: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Calendly-Webhook-Signature: {signature}\r\nX-Request-Id: {request_id}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Delivery:
    rid: str  # X-Request-Id: which request an answer belongs to
    kind: Kind
    user: User
    event_id: str
    invitee_id: str
    original: str  # rid of the delivery this copies (itself unless a duplicate)
    body: bytes = b""
    signature: str = ""

    @property
    def event_uri(self) -> str:
        return f"{BASE}/scheduled_events/{self.event_id}"

    @property
    def invitee_uri(self) -> str:
        return f"{self.event_uri}/invitees/{self.invitee_id}"

    @property
    def event_key(self) -> str:
        """`calendly_webhook_events.event_id` as the service derives it."""
        name = "invitee.canceled" if self.kind == "cancel" else "invitee.created"
        return f"{self.connection_id}:{name}:{self.invitee_uri}"

    @property
    def connection_id(self) -> str:
        return self.user.connection_id


@dataclass
class Mix:
    """A sequence of deliveries: ~70 % new bookings, ~20 % exact duplicates, ~10 % cancels."""

    deliveries: list[Delivery] = field(default_factory=list)

    def write(self, path: Path, host: str) -> None:
        """The raw HTTP requests, each preceded by its length on a line (read by wrk's Lua)."""
        with path.open("wb") as out:
            for d in self.deliveries:
                raw = raw_request(
                    host, f"/webhooks/calendly/{d.user.webhook_token}", d.body, d.signature, d.rid
                )
                out.write(f"{len(raw)}\n".encode())
                out.write(raw)


def make_mix(
    users: list[User], count: int, tag: str, seed: int = 6, timestamp: int | None = None
) -> Mix:
    """`count` deliveries for random users, signed now (the tolerance is 180 s).

    A duplicate repeats a booking posted 50-400 requests earlier byte for byte; a cancel
    cancels one posted at least 50 earlier that nothing canceled yet. With 32 connections in
    flight, most arrive after their original, some race it: the end state is the same.
    """
    rng = random.Random(seed)
    stamp = int(time.time()) if timestamp is None else timestamp
    mix = Mix()
    bookings: list[Delivery] = []
    canceled: set[str] = set()
    for n in range(count):
        roll = rng.random()
        rid = f"{tag}-{n}"
        old = bookings[-400:-50] if len(bookings) > 60 else []
        if roll < 0.2 and old:
            first = rng.choice(old)
            d = Delivery(rid, "dup", first.user, first.event_id, first.invitee_id, first.rid)
            d.body, d.signature = first.body, first.signature
        elif roll < 0.3 and old:
            candidates = [b for b in old if b.rid not in canceled]
            first = rng.choice(candidates)
            canceled.add(first.rid)
            d = Delivery(rid, "cancel", first.user, first.event_id, first.invitee_id, rid)
            d.body = body_for(d.user, d.event_id, d.invitee_id, canceled=True)
            d.signature = sign(d.body, d.user.signing_key, stamp)
        else:
            user = rng.choice(users)
            d = Delivery(rid, "book", user, f"{tag}-e{n}", f"{tag}-i{n}", rid)
            d.body = body_for(user, d.event_id, d.invitee_id, canceled=False)
            d.signature = sign(d.body, user.signing_key, stamp)
            bookings.append(d)
        mix.deliveries.append(d)
    return mix
