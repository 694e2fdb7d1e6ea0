"""Build Calendly webhook deliveries as Calendly sends them, and sign them independently."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

BASE = "https://api.calendly.test"


def sign(body: bytes, key: str, timestamp: int | None = None) -> str:
    """The documented scheme, written here without the code under test."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(key.encode("utf-8"), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def invitee_payload(
    *,
    host_uri: str,
    event_id: str,
    invitee_id: str,
    status: str = "active",
    event_status: str = "active",
    start: str = "2030-03-05T14:30:00.000000Z",
    rescheduled: bool = False,
    old_invitee: str | None = None,
    new_invitee: str | None = None,
    no_show_id: str | None = None,
    canceler_type: str | None = None,
    legacy: bool = False,
) -> dict[str, Any]:
    event_uri = f"{BASE}/scheduled_events/{event_id}"
    payload: dict[str, Any] = {
        "uri": f"{event_uri}/invitees/{invitee_id}",
        "event": event_uri,
        "email": f"{invitee_id}@example.org",
        "name": f"Guest {invitee_id}",
        "status": status,
        "timezone": "America/New_York",
        "rescheduled": rescheduled,
        "old_invitee": old_invitee,
        "new_invitee": new_invitee,
        "no_show": (
            {"uri": f"{BASE}/invitee_no_shows/{no_show_id}", "created_at": "2030-03-05T15:00:00Z"}
            if no_show_id
            else None
        ),
        "questions_and_answers": [],
        "created_at": "2030-03-01T10:04:59.812000Z",
        "updated_at": "2030-03-01T10:04:59.812000Z",
    }
    if canceler_type is not None:
        payload["cancellation"] = {
            "canceled_by": "Someone",
            "reason": "busy",
            "canceler_type": canceler_type,
            "created_at": "2030-03-02T10:00:00.000000Z",
        }
    if legacy:
        payload["canceled"] = status == "canceled"
        return payload
    payload["scheduled_event"] = {
        "uri": event_uri,
        "name": "30 Minute Meeting",
        "status": event_status,
        "start_time": start,
        "end_time": start.replace("14:30", "15:00"),
        "event_type": f"{BASE}/event_types/et1",
        "location": {"type": "zoom", "join_url": "https://zoom.example/j/1", "status": "pushed"},
        "invitees_counter": {"total": 1, "active": 1, "limit": 1},
        "event_memberships": [{"user": host_uri, "user_email": "h@example.com"}],
        "event_guests": [],
        "created_at": "2030-03-01T10:04:59.790000Z",
        "updated_at": "2030-03-01T10:04:59.790000Z",
    }
    return payload


def envelope(
    event: str, payload: dict[str, Any], created_by: str, created_at: str = "2030-03-01T10:05:00Z"
) -> bytes:
    return json.dumps(
        {"event": event, "created_at": created_at, "created_by": created_by, "payload": payload}
    ).encode()
