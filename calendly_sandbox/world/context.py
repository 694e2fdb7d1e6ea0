"""What every aggregate of the world reads: the clock, the settings in force, the URI scheme."""

from __future__ import annotations

import time
from dataclasses import dataclass

from calendly_sandbox.config import Settings
from calendly_sandbox.model import Invitee


class Clock:
    """Wall clock with an offset that tests can advance."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Uris:
    """Calendly's URIs for the sandbox's resources, all under `base_url`."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def user(self, user_id: str) -> str:
        return f"{self.base_url}/users/{user_id}"

    def organization(self, org_id: str) -> str:
        return f"{self.base_url}/organizations/{org_id}"

    def subscription(self, sub_id: str) -> str:
        return f"{self.base_url}/webhook_subscriptions/{sub_id}"

    def event(self, event_id: str) -> str:
        return f"{self.base_url}/scheduled_events/{event_id}"

    def invitee(self, invitee: Invitee) -> str:
        return f"{self.event(invitee.event_id)}/invitees/{invitee.id}"

    def event_type(self, event_type_id: str) -> str:
        return f"{self.base_url}/event_types/{event_type_id}"

    def scheduling_page(self, slug: str) -> str:
        return f"{self.base_url}/_sandbox/book/{slug}"

    def cancellation(self, invitee_id: str) -> str:
        return f"{self.base_url}/cancellations/{invitee_id}"

    def rescheduling(self, invitee_id: str) -> str:
        return f"{self.base_url}/reschedulings/{invitee_id}"

    def no_show(self, no_show_id: str) -> str:
        return f"{self.base_url}/invitee_no_shows/{no_show_id}"

    def id_of(self, uri: str, kind: str) -> str | None:
        """The id of `uri` when it is one of ours of that kind (query parameters take full URIs)."""
        prefix = f"{self.base_url}/{kind}/"
        if uri.startswith(prefix) and "/" not in uri[len(prefix) :]:
            return uri[len(prefix) :]
        return None


@dataclass
class Context:
    """One instance shared by reference among the aggregates.

    The control API replaces `settings` and the server sets `uris.base_url` once it listens;
    because every aggregate reads them through this object, each sees the change at once.
    """

    clock: Clock
    settings: Settings
    uris: Uris
