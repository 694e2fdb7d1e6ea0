"""Webhook subscriptions: who may create which, when a URL collides, who hears what, disabling."""

from __future__ import annotations

import re
from typing import Any

from calendly_sandbox.errors import (
    HOOK_EXISTS_MESSAGE,
    NO_PERMISSION_MESSAGE,
    PLAN_UPGRADE_MESSAGE,
    ApiError,
    invalid_argument,
)
from calendly_sandbox.model import (
    KNOWN_EVENTS,
    ORGANIZATION_ONLY_EVENTS,
    USER_ONLY_EVENTS,
    ScheduledEvent,
    Subscription,
    User,
    new_id,
)

from .context import Context
from .grants import Grants
from .people import People


class WebhookSubscriptions:
    """Every webhook subscription, active or disabled, by id."""

    def __init__(self, context: Context, people: People, grants: Grants) -> None:
        self.context = context
        self.people = people
        self.grants = grants
        self.subscriptions: dict[str, Subscription] = {}

    def create(self, caller: User, client_id: str | None, body: dict[str, Any]) -> Subscription:
        """Create what `body` asks for on behalf of `caller`, as Calendly would.

        Raises ApiError: 400 with details for a bad body, 403 for a scope the caller may not
        use or a free plan, 409 when the URL is taken (per the `hook_uniqueness` setting).
        """
        details = []
        for name in ("url", "events", "organization", "scope"):
            if body.get(name) in (None, "", []):
                details.append({"parameter": name, "message": "is required"})
        scope = body.get("scope")
        if scope == "user" and not body.get("user"):
            details.append({"parameter": "user", "message": "is required when scope is user"})
        if scope == "group" and not body.get("group"):
            details.append({"parameter": "group", "message": "is required when scope is group"})
        if scope not in (None, "", "user", "organization", "group"):
            details.append(
                {"parameter": "scope", "message": "must be one of user, organization, group"}
            )
        url = body.get("url")
        if isinstance(url, str) and url and not re.match(r"^https?://[^\s/]+", url):
            details.append({"parameter": "url", "message": "must be a valid http(s) URL"})
        events = body.get("events")
        if events not in (None, []) and (
            not isinstance(events, list) or not all(isinstance(e, str) for e in events)
        ):
            details.append({"parameter": "events", "message": "must be a list of event names"})
        elif isinstance(events, list):
            for event in events:
                if event not in KNOWN_EVENTS:
                    details.append({"parameter": "events", "message": f"{event} is not valid"})
                elif event in ORGANIZATION_ONLY_EVENTS and scope != "organization":
                    details.append(
                        {"parameter": "events", "message": f"{event} needs organization scope"}
                    )
                elif event in USER_ONLY_EVENTS and scope != "user":
                    details.append({"parameter": "events", "message": f"{event} needs user scope"})
        signing_key = body.get("signing_key")
        if signing_key is not None and (not isinstance(signing_key, str) or not signing_key):
            details.append({"parameter": "signing_key", "message": "must be a non-empty string"})
        for name in ("url", "organization", "user", "group"):
            if body.get(name) is not None and not isinstance(body.get(name), str):
                details.append({"parameter": name, "message": "must be a string"})
        if details:
            raise ApiError(400, details=details)

        uris, people = self.context.uris, self.people
        org_id = uris.id_of(body["organization"], "organizations")
        if org_id is None or org_id not in people.organizations:
            raise invalid_argument("organization", "is not a known organization URI")
        if org_id != caller.organization_id:
            raise ApiError(403, NO_PERMISSION_MESSAGE)
        user_id: str | None = None
        if scope == "user":
            user_id = uris.id_of(body["user"], "users")
            if user_id is None or user_id not in people.users:
                raise invalid_argument("user", "is not a known user URI")
            if user_id != caller.id and not (
                caller.is_admin and people.users[user_id].organization_id == caller.organization_id
            ):
                raise ApiError(403, NO_PERMISSION_MESSAGE)
        elif not caller.is_admin:
            raise ApiError(403, NO_PERMISSION_MESSAGE)
        if not caller.paid:
            raise ApiError(403, PLAN_UPGRADE_MESSAGE)
        if self._conflict(body["url"], org_id, user_id):
            raise ApiError(409, HOOK_EXISTS_MESSAGE)

        now = self.context.clock.now()
        sub = Subscription(
            id=new_id(),
            callback_url=body["url"],
            events=list(dict.fromkeys(events or [])),
            scope=scope,  # type: ignore[arg-type]  # validated above
            organization_id=org_id,
            user_id=user_id,
            group=body.get("group") if scope == "group" else None,
            creator_id=caller.id,
            client_id=client_id,
            signing_key=signing_key,
            created_at=now,
            updated_at=now,
        )
        self.subscriptions[sub.id] = sub
        return sub

    def _conflict(self, url: str, org_id: str, user_id: str | None) -> bool:
        mode = self.context.settings.hook_uniqueness
        for sub in self.subscriptions.values():
            if sub.callback_url != url:
                continue
            if mode == "global":
                return True
            if mode == "organization" and sub.organization_id == org_id:
                return True
            if mode == "user" and sub.organization_id == org_id and sub.user_id == user_id:
                return True
        return False

    def visible(self, caller: User, sub_id: str) -> Subscription:
        """The subscription if `caller` may see it; raises ApiError 404 or 403."""
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            raise ApiError(404)
        if sub.organization_id != caller.organization_id:
            raise ApiError(403, NO_PERMISSION_MESSAGE)
        if sub.scope == "user" and sub.user_id != caller.id and not caller.is_admin:
            raise ApiError(403, NO_PERMISSION_MESSAGE)
        return sub

    def matching(self, caller: User, query: dict[str, str]) -> list[Subscription]:
        """The subscriptions a list query asks for; raises ApiError 400 or 403 as Calendly does."""
        details = [
            {"parameter": name, "message": "is required"}
            for name in ("organization", "scope")
            if not query.get(name)
        ]
        scope = query.get("scope")
        if scope == "user" and not query.get("user"):
            details.append({"parameter": "user", "message": "is required when scope is user"})
        if scope == "group" and not query.get("group"):
            details.append({"parameter": "group", "message": "is required when scope is group"})
        if scope and scope not in ("user", "organization", "group"):
            details.append(
                {"parameter": "scope", "message": "must be one of user, organization, group"}
            )
        if details:
            raise ApiError(400, details=details)
        uris = self.context.uris
        org_id = uris.id_of(query["organization"], "organizations")
        if org_id is None or org_id not in self.people.organizations:
            raise invalid_argument("organization", "is not a known organization URI")
        if org_id != caller.organization_id:
            raise ApiError(403, NO_PERMISSION_MESSAGE)
        subs = [
            s
            for s in self.subscriptions.values()
            if s.organization_id == org_id and s.scope == scope
        ]
        if scope == "user":
            user_id = uris.id_of(query["user"], "users")
            if user_id is None:
                raise invalid_argument("user", "is not a known user URI")
            if user_id != caller.id and not caller.is_admin:
                raise ApiError(403, NO_PERMISSION_MESSAGE)
            subs = [s for s in subs if s.user_id == user_id]
        elif scope == "group":
            subs = [s for s in subs if s.group == query["group"]]
        elif not caller.is_admin:
            raise ApiError(403, NO_PERMISSION_MESSAGE)
        return subs

    def delete(self, sub: Subscription) -> None:
        del self.subscriptions[sub.id]

    def hearing(self, event_name: str, event: ScheduledEvent) -> list[Subscription]:
        """Active subscriptions told about `event_name` happening to `event`."""
        return [
            s
            for s in self.subscriptions.values()
            if s.state == "active"
            and event_name in s.events
            and (
                (s.scope == "user" and s.user_id == event.host_id)
                or (s.scope == "organization" and s.organization_id == event.organization_id)
            )
        ]

    def signing_key(self, sub: Subscription) -> str | None:
        """Its own key, else the key of the OAuth app that created it; None sends no signature."""
        if sub.signing_key:
            return sub.signing_key
        client = self.grants.client(sub.client_id or "")
        return client.webhook_signing_key if client else None

    # ------------------------------------------------------------ delivery
    def retrying(self, sub: Subscription) -> None:
        """A delivery failed: the retry window starts now unless it already runs."""
        if sub.retry_started_at is None:
            sub.retry_started_at = self.context.clock.now()

    def delivered(self, sub: Subscription) -> None:
        """A delivery succeeded: the retry window closes."""
        sub.retry_started_at = None

    def disable(self, sub: Subscription) -> None:
        """Stop sending to it, as Calendly does after 24 hours of failed deliveries."""
        sub.state = "disabled"
        sub.updated_at = self.context.clock.now()
