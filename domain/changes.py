"""The change feed: every committed change a host's back end cares about, in one order.

Written by the database in the same transaction as the change itself (migrations/0008); read by
the host's back end through `GET /v1/changes` and, later, sent as host webhooks. A cursor names
a position in the feed: every change after it, and none before, is read next (DR-31).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal, Protocol

import msgspec

from domain.ports import ListedConnection, MeetingView

ChangeKind = Literal["connection", "meeting"]
# The events a change can carry (migrations/0008 decides which).
CONNECTION_EVENTS = (
    "connection.connected",
    "connection.reconnected",
    "connection.disconnected",
    "connection.needs_reauth",
    "connection.recovered",
    "connection.webhooks_disabled",
    "connection.webhooks_unavailable_plan",
    "connection.updated",
)
MEETING_EVENTS = (
    "meeting.created",
    "meeting.updated",
    "meeting.canceled",
    "meeting.rescheduled",
    "invitee.no_show_set",
    "invitee.no_show_cleared",
)


class ChangePosition(msgspec.Struct, frozen=True, order=True):
    """Where a change sits in the feed: its transaction's id, then its own."""

    xid: int
    id: int


class Change(msgspec.Struct, frozen=True, kw_only=True):
    position: ChangePosition
    user_id: str
    # 1, 2, 3, ... per user, in the order that user's changes committed.
    user_seq: int
    kind: ChangeKind
    subject_id: str
    event: str
    created_at: datetime
    # The subject as it is now (None: erased since); a back end upserts it by id.
    connection: ListedConnection | None = None
    meeting: MeetingView | None = None


class ChangeFeed(Protocol):
    """Reads across every user (the host's view), never writes."""

    async def read(self, after: ChangePosition | None, limit: int) -> Sequence[Change]:
        """Up to `limit` changes after `after` (None: from the start), in feed order.

        Only changes of transactions that have ended are read, so a later read after the
        last position returned finds every change committed since, and none twice.
        """
        ...


# The events a host webhook endpoint may ask for (HOST_WEBHOOK_EVENTS): exact names, or a
# family with `.*` ('meeting.*', 'invitee.*', 'connection.*'), or '*'.
EVENT_FAMILIES = ("connection", "meeting", "invitee")


def is_event_pattern(pattern: str) -> bool:
    if pattern == "*" or pattern in CONNECTION_EVENTS or pattern in MEETING_EVENTS:
        return True
    family, dot, star = pattern.partition(".")
    return bool(dot) and star == "*" and family in EVENT_FAMILIES


def event_matches(event: str, patterns: Sequence[str]) -> bool:
    """Whether an endpoint that asked for `patterns` wants `event` (none asked: every event)."""
    if not patterns:
        return True
    family = event.partition(".")[0]
    return any(p in ("*", event, f"{family}.*") for p in patterns)
