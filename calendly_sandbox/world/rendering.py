"""The JSON shapes Calendly answers with and sends, the pre-2022 webhook payload style included."""

from __future__ import annotations

from typing import Any

from calendly_sandbox.model import (
    Cancellation,
    Invitee,
    NoShow,
    ScheduledEvent,
    Subscription,
    TokenGrant,
    User,
    iso,
)

from .bookings import Bookings, Notification
from .context import Context
from .grants import Grants
from .people import People


def cancellation_json(c: Cancellation) -> dict[str, Any]:
    return {
        "canceled_by": c.canceled_by,
        "reason": c.reason,
        "canceler_type": c.canceler_type,
        "created_at": iso(c.created_at),
    }


class Rendering:
    """Reads the aggregates and shapes their state; it changes nothing."""

    def __init__(
        self, context: Context, people: People, grants: Grants, bookings: Bookings
    ) -> None:
        self.context = context
        self.people = people
        self.grants = grants
        self.bookings = bookings

    # ---------------------------------------------------------------- OAuth
    def token_response(self, grant: TokenGrant) -> dict[str, Any]:
        """The token endpoint's answer; clients asking for the older shape get no `organization`."""
        uris = self.context.uris
        user = self.people.users[grant.user_id]
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": grant.access_token,
            "refresh_token": grant.refresh_token,
            "scope": "default",
            "created_at": int(grant.created_at),
            "expires_in": int(grant.expires_at - grant.created_at),
            "owner": uris.user(user.id),
        }
        client = self.grants.client(grant.client_id)
        if client is None or not client.legacy_token_response:
            body["organization"] = uris.organization(user.organization_id)
        return body

    def introspection(self, grant: TokenGrant | None, token: str) -> dict[str, Any]:
        """RFC 7662's answer for `token`, whose grant is None unless the token is active."""
        if grant is None:
            return {"active": False}
        uris = self.context.uris
        user = self.people.users[grant.user_id]
        body: dict[str, Any] = {
            "active": True,
            "scope": "default",
            "client_id": grant.client_id,
            "token_type": "Bearer",
            "iat": int(grant.created_at),
            "owner": uris.user(user.id),
            "organization": uris.organization(user.organization_id),
        }
        if token == grant.access_token:
            body["exp"] = int(grant.expires_at)
        return body

    # ------------------------------------------------------------ resources
    def user_json(self, user: User) -> dict[str, Any]:
        uris = self.context.uris
        return {
            "uri": uris.user(user.id),
            "name": user.name,
            "slug": user.slug,
            "email": user.email,
            "scheduling_url": uris.scheduling_page(user.slug),
            "timezone": user.timezone,
            "avatar_url": None,
            "locale": "en",
            "time_notation": "24h",
            "resource_type": "User",
            "created_at": iso(user.created_at),
            "updated_at": iso(user.updated_at),
            "current_organization": uris.organization(user.organization_id),
        }

    def subscription_json(self, sub: Subscription) -> dict[str, Any]:
        uris = self.context.uris
        return {
            "uri": uris.subscription(sub.id),
            "callback_url": sub.callback_url,
            "created_at": iso(sub.created_at),
            "updated_at": iso(sub.updated_at),
            "retry_started_at": iso(sub.retry_started_at) if sub.retry_started_at else None,
            "state": sub.state,
            "events": list(sub.events),
            "scope": sub.scope,
            "organization": uris.organization(sub.organization_id),
            "user": uris.user(sub.user_id) if sub.user_id else None,
            "group": sub.group,
            "creator": uris.user(sub.creator_id),
        }

    def event_json(self, event: ScheduledEvent) -> dict[str, Any]:
        uris = self.context.uris
        host = self.people.users[event.host_id]
        invitees = [self.bookings.invitees[i] for i in event.invitee_ids]
        active = sum(1 for i in invitees if i.status == "active")
        body: dict[str, Any] = {
            "uri": uris.event(event.id),
            "name": event.name,
            "status": event.status,
            "start_time": iso(event.start_time),
            "end_time": iso(event.end_time),
            "event_type": uris.event_type(event.event_type_id),
            "location": dict(event.location),
            "invitees_counter": {
                "total": len(invitees),
                "active": active,
                "limit": event.invitee_limit,
            },
            "created_at": iso(event.created_at),
            "updated_at": iso(event.updated_at),
            "event_memberships": [
                {"user": uris.user(host.id), "user_email": host.email, "user_name": host.name}
            ],
            "event_guests": [],
            "calendar_event": None,
            "meeting_notes_plain": None,
            "meeting_notes_html": None,
        }
        if event.cancellation is not None:
            body["cancellation"] = cancellation_json(event.cancellation)
        return body

    def invitee_json(self, invitee: Invitee) -> dict[str, Any]:
        uris = self.context.uris

        def other(invitee_id: str | None) -> str | None:
            return uris.invitee(self.bookings.invitees[invitee_id]) if invitee_id else None

        first, _, last = invitee.name.partition(" ")
        body: dict[str, Any] = {
            "uri": uris.invitee(invitee),
            "event": uris.event(invitee.event_id),
            "email": invitee.email,
            "name": invitee.name,
            "first_name": first or None,
            "last_name": last or None,
            "status": invitee.status,
            "timezone": invitee.timezone,
            "created_at": iso(invitee.created_at),
            "updated_at": iso(invitee.updated_at),
            "questions_and_answers": [dict(q) for q in invitee.questions_and_answers],
            "tracking": {
                "utm_campaign": None,
                "utm_source": None,
                "utm_medium": None,
                "utm_content": None,
                "utm_term": None,
                "salesforce_uuid": None,
            },
            "text_reminder_number": None,
            "rescheduled": invitee.rescheduled,
            "old_invitee": other(invitee.old_invitee_id),
            "new_invitee": other(invitee.new_invitee_id),
            "cancel_url": uris.cancellation(invitee.id),
            "reschedule_url": uris.rescheduling(invitee.id),
            "routing_form_submission": None,
            "payment": None,
            "no_show": self._no_show_json(invitee.no_show) if invitee.no_show else None,
            "reconfirmation": None,
            "scheduling_method": None,
            "invitee_scheduled_by": None,
        }
        if invitee.cancellation is not None:
            body["cancellation"] = cancellation_json(invitee.cancellation)
        return body

    def _no_show_json(self, no_show: NoShow) -> dict[str, Any]:
        return {
            "uri": self.context.uris.no_show(no_show.id),
            "created_at": iso(no_show.created_at),
        }

    # ------------------------------------------------------------- webhooks
    def webhook_payload(self, note: Notification, removed_no_show: NoShow | None = None) -> Any:
        """The `payload` of a delivery, in the current or the pre-2022 shape."""
        invitee = self.bookings.invitees[note.invitee_id]
        body = self.invitee_json(invitee)
        if note.event == "invitee_no_show.deleted" and removed_no_show is not None:
            body["no_show"] = self._no_show_json(removed_no_show)
        host = self.people.users.get(self.bookings.event_of(invitee).host_id)
        style = (host.payload_style if host else None) or self.context.settings.payload_style
        if style == "legacy":
            for newer in (
                "scheduling_method",
                "invitee_scheduled_by",
                "reconfirmation",
                "routing_form_submission",
                "first_name",
                "last_name",
            ):
                body.pop(newer, None)
            body["canceled"] = invitee.status == "canceled"
        else:
            body["scheduled_event"] = self.event_json(self.bookings.event_of(invitee))
        return body
