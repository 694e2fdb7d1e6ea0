"""The sandbox's state and Calendly's rules over it (no HTTP): World, the facade over its parts."""

from __future__ import annotations

from typing import Any

from calendly_sandbox.config import OAuthClient, PayloadStyle, SandboxConfig, Settings
from calendly_sandbox.model import (
    AuthorizationCode,
    CancelerType,
    Invitee,
    NoShow,
    Organization,
    Plan,
    Role,
    ScheduledEvent,
    Subscription,
    TokenGrant,
    User,
    new_secret,
)

from .bookings import LOCATION_TYPES, Bookings, Notification
from .context import Clock, Context, Uris
from .grants import Grants
from .people import People
from .rendering import Rendering
from .subscriptions import WebhookSubscriptions

__all__ = ["LOCATION_TYPES", "Clock", "Notification", "World"]


class World:
    """All sandbox state, mutated only from the event loop (so no locks are needed).

    The rules live in the aggregates (`people`, `grants`, `webhooks`, `bookings`) and the JSON
    shapes in `rendering`; this class wires them together and keeps one surface for the HTTP
    modules, the deliverer, persistence and tests. It adds no rule of its own beyond routing
    a question to the aggregate that can answer it.
    """

    def __init__(self, config: SandboxConfig) -> None:
        self.context = Context(
            clock=Clock(),
            settings=config.settings,
            uris=Uris((config.base_url or "http://127.0.0.1").rstrip("/")),
        )
        self.people = People(self.context)
        # `new_secret` is looked up at call time, so a test can patch it on this module to mark
        # every token (tests/security/test_canaries.py does, to find tokens that leak).
        self.grants = Grants(
            self.context, self.people, config.clients, lambda prefix: new_secret(prefix)
        )
        self.webhooks = WebhookSubscriptions(self.context, self.people, self.grants)
        self.bookings = Bookings(self.context, self.people)
        self.rendering = Rendering(self.context, self.people, self.grants, self.bookings)

    # --------------------------------------------------------- shared state
    @property
    def clock(self) -> Clock:
        return self.context.clock

    @property
    def settings(self) -> Settings:
        return self.context.settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self.context.settings = settings

    @property
    def base_url(self) -> str:
        return self.context.uris.base_url

    @base_url.setter
    def base_url(self, base_url: str) -> None:
        self.context.uris.base_url = base_url

    @property
    def organizations(self) -> dict[str, Organization]:
        return self.people.organizations

    @property
    def users(self) -> dict[str, User]:
        return self.people.users

    @property
    def clients(self) -> dict[str, OAuthClient]:
        return self.grants.clients

    @property
    def codes(self) -> dict[str, AuthorizationCode]:
        return self.grants.codes

    @property
    def grants_by_access(self) -> dict[str, TokenGrant]:
        return self.grants.by_access

    @property
    def grants_by_refresh(self) -> dict[str, TokenGrant]:
        return self.grants.by_refresh

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        return self.webhooks.subscriptions

    @property
    def events(self) -> dict[str, ScheduledEvent]:
        return self.bookings.events

    @property
    def invitees(self) -> dict[str, Invitee]:
        return self.bookings.invitees

    @property
    def event_type_ids(self) -> dict[str, str]:
        return self.bookings.event_type_ids

    # ----------------------------------------------------------------- URIs
    def user_uri(self, user_id: str) -> str:
        return self.context.uris.user(user_id)

    def org_uri(self, org_id: str) -> str:
        return self.context.uris.organization(org_id)

    def event_uri(self, event_id: str) -> str:
        return self.context.uris.event(event_id)

    def invitee_uri(self, invitee: Invitee) -> str:
        return self.context.uris.invitee(invitee)

    def uri_id(self, uri: str, kind: str) -> str | None:
        return self.context.uris.id_of(uri, kind)

    # ------------------------------------------------------- people & orgs
    def create_organization(self, name: str, org_id: str | None = None) -> Organization:
        return self.people.create_organization(name, org_id)

    def create_user(
        self,
        *,
        name: str,
        email: str,
        plan: Plan = "standard",
        organization_id: str | None = None,
        role: Role | None = None,
        timezone: str = "Europe/Berlin",
        user_id: str | None = None,
    ) -> User:
        return self.people.create_user(
            name=name,
            email=email,
            plan=plan,
            organization_id=organization_id,
            role=role,
            timezone=timezone,
            user_id=user_id,
        )

    def change_user(
        self,
        user: User,
        *,
        plan: Plan | None,
        role: Role | None,
        payload_style: PayloadStyle | None = None,
    ) -> None:
        self.people.change_user(user, plan=plan, role=role, payload_style=payload_style)

    def user_by_email(self, email: str) -> User | None:
        return self.people.user_by_email(email)

    def get_user(self, user_id: str) -> User:
        return self.people.get_user(user_id)

    # ---------------------------------------------------------------- OAuth
    def client(self, client_id: str) -> OAuthClient | None:
        return self.grants.client(client_id)

    def authenticate_client(self, client_id: str | None, client_secret: str | None) -> OAuthClient:
        return self.grants.authenticate_client(client_id, client_secret)

    def issue_code(
        self, client: OAuthClient, redirect_uri: str, user: User, code_challenge: str | None
    ) -> str:
        return self.grants.issue_code(client, redirect_uri, user, code_challenge)

    def redeem_code(
        self, client: OAuthClient, code: str, redirect_uri: str | None, verifier: str | None
    ) -> TokenGrant:
        return self.grants.redeem_code(client, code, redirect_uri, verifier)

    def refresh(self, client: OAuthClient, refresh_token: str) -> TokenGrant:
        return self.grants.refresh(client, refresh_token)

    def user_for_code(self, code: str) -> str | None:
        return self.grants.user_for_code(code)

    def user_for_refresh(self, refresh_token: str) -> str | None:
        return self.grants.user_for_refresh(refresh_token)

    def token_response(self, grant: TokenGrant) -> dict[str, Any]:
        return self.rendering.token_response(grant)

    def revoke(self, client: OAuthClient, token: str) -> None:
        self.grants.revoke(client, token)

    def introspect(self, client: OAuthClient, token: str) -> dict[str, Any]:
        return self.rendering.introspection(self.grants.active_grant(client, token), token)

    def bearer_user(self, token: str) -> tuple[TokenGrant, User]:
        return self.grants.bearer_user(token)

    def expire_access_tokens(self, user_id: str) -> int:
        return self.grants.expire_access_tokens(user_id)

    def revoke_all(self, user_id: str) -> int:
        return self.grants.revoke_all(user_id)

    # -------------------------------------------------------- subscriptions
    def create_subscription(
        self, caller: User, client_id: str | None, body: dict[str, Any]
    ) -> Subscription:
        return self.webhooks.create(caller, client_id, body)

    def visible_subscription(self, caller: User, sub_id: str) -> Subscription:
        return self.webhooks.visible(caller, sub_id)

    def list_subscriptions(self, caller: User, query: dict[str, str]) -> list[Subscription]:
        return self.webhooks.matching(caller, query)

    def delete_subscription(self, sub: Subscription) -> None:
        self.webhooks.delete(sub)

    def subscribers(self, note: Notification) -> list[Subscription]:
        """Active subscriptions that hear about `note`."""
        event = self.bookings.event_of(self.bookings.invitees[note.invitee_id])
        return self.webhooks.hearing(note.event, event)

    def signing_key(self, sub: Subscription) -> str | None:
        return self.webhooks.signing_key(sub)

    def subscription_retrying(self, sub: Subscription) -> None:
        self.webhooks.retrying(sub)

    def subscription_delivered(self, sub: Subscription) -> None:
        self.webhooks.delivered(sub)

    def disable_subscription(self, sub: Subscription) -> None:
        self.webhooks.disable(sub)

    # --------------------------------------------------- scheduled events
    def book(
        self,
        host: User,
        *,
        invitees: list[tuple[str, str]],
        start_time: float,
        duration_minutes: int,
        name: str,
        location_type: str,
        invitee_limit: int,
        timezone: str = "America/New_York",
        questions_and_answers: list[dict[str, Any]] | None = None,
    ) -> tuple[ScheduledEvent, list[Notification]]:
        return self.bookings.book(
            host,
            invitees=invitees,
            start_time=start_time,
            duration_minutes=duration_minutes,
            name=name,
            location_type=location_type,
            invitee_limit=invitee_limit,
            timezone=timezone,
            questions_and_answers=questions_and_answers,
        )

    def add_invitee(
        self, event: ScheduledEvent, name: str, email: str, timezone: str = "America/New_York"
    ) -> Notification:
        return self.bookings.add_invitee(event, name, email, timezone)

    def get_invitee(self, invitee_id: str) -> Invitee:
        return self.bookings.get_invitee(invitee_id)

    def get_event(self, event_id: str) -> ScheduledEvent:
        return self.bookings.get_event(event_id)

    def cancel_invitee(
        self,
        invitee: Invitee,
        canceler_type: CancelerType,
        reason: str | None,
        *,
        rescheduled_to: str | None = None,
    ) -> Notification:
        return self.bookings.cancel_invitee(
            invitee, canceler_type, reason, rescheduled_to=rescheduled_to
        )

    def cancel_event(self, event: ScheduledEvent, reason: str | None) -> list[Notification]:
        return self.bookings.cancel_event(event, reason)

    def reschedule(
        self, invitee: Invitee, start_time: float, duration_minutes: int | None
    ) -> tuple[Notification, Notification]:
        return self.bookings.reschedule(invitee, start_time, duration_minutes)

    def mark_no_show(self, invitee: Invitee) -> Notification:
        return self.bookings.mark_no_show(invitee)

    def unmark_no_show(self, invitee: Invitee) -> tuple[Notification, NoShow]:
        return self.bookings.unmark_no_show(invitee)

    def event_visible(self, caller: User, event: ScheduledEvent) -> bool:
        return self.bookings.event_visible(caller, event)

    # -------------------------------------------------------------- shapes
    def user_json(self, user: User) -> dict[str, Any]:
        return self.rendering.user_json(user)

    def subscription_json(self, sub: Subscription) -> dict[str, Any]:
        return self.rendering.subscription_json(sub)

    def event_json(self, event: ScheduledEvent) -> dict[str, Any]:
        return self.rendering.event_json(event)

    def invitee_json(self, invitee: Invitee) -> dict[str, Any]:
        return self.rendering.invitee_json(invitee)

    def webhook_payload(self, note: Notification, removed_no_show: NoShow | None = None) -> Any:
        return self.rendering.webhook_payload(note, removed_no_show)
