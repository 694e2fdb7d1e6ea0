"""The sandbox's state and the rules Calendly applies to it (no HTTP here)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import OAuthClient, SandboxConfig, Settings
from .errors import (
    HOOK_EXISTS_MESSAGE,
    NO_PERMISSION_MESSAGE,
    PLAN_UPGRADE_MESSAGE,
    ApiError,
    OAuthError,
    invalid_argument,
)
from .model import (
    KNOWN_EVENTS,
    ORGANIZATION_ONLY_EVENTS,
    USER_ONLY_EVENTS,
    AuthorizationCode,
    CancelerType,
    Cancellation,
    Invitee,
    NoShow,
    Organization,
    Plan,
    Role,
    ScheduledEvent,
    Subscription,
    TokenGrant,
    User,
    iso,
    new_id,
    new_secret,
)

LOCATION_TYPES: dict[str, Callable[[], dict[str, Any]]] = {
    "physical": lambda: {"type": "physical", "location": "Main Street 1, Springfield"},
    "zoom": lambda: {
        "type": "zoom",
        "join_url": "https://zoom.example/j/1",
        "status": "pushed",
        "data": {},
    },
    "google_conference": lambda: {
        "type": "google_conference",
        "join_url": "https://meet.example/abc",
        "status": "pushed",
    },
    "microsoft_teams_conference": lambda: {
        "type": "microsoft_teams_conference",
        "join_url": "https://teams.example/l/1",
        "status": "pushed",
        "data": {},
    },
    "gotomeeting": lambda: {
        "type": "gotomeeting",
        "join_url": "https://gotomeeting.example/join/1",
        "status": "pushed",
        "data": {},
    },
    "webex": lambda: {
        "type": "webex",
        "join_url": "https://webex.example/meet/1",
        "status": "pushed",
        "data": {},
    },
    "outbound_call": lambda: {"type": "outbound_call", "location": "+1 555 0100"},
    "inbound_call": lambda: {"type": "inbound_call", "location": "+1 555 0101"},
    "custom": lambda: {"type": "custom", "location": "Somewhere custom"},
    "ask_invitee": lambda: {"type": "ask_invitee", "location": "Invitee's choice"},
}


@dataclass(frozen=True)
class Notification:
    """Something happened that subscriptions may be told about."""

    event: str
    invitee_id: str
    created_at: float


class Clock:
    """Wall clock with an offset that tests can advance."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "user"


def pkce_s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class World:
    """All sandbox state, mutated only from the event loop (so no locks are needed)."""

    def __init__(self, config: SandboxConfig) -> None:
        self.clock = Clock()
        self.base_url = (config.base_url or "http://127.0.0.1").rstrip("/")
        self.settings: Settings = config.settings
        self.clients: dict[str, OAuthClient] = {c.client_id: c for c in config.clients}
        self.organizations: dict[str, Organization] = {}
        self.users: dict[str, User] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.grants_by_access: dict[str, TokenGrant] = {}
        self.grants_by_refresh: dict[str, TokenGrant] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.events: dict[str, ScheduledEvent] = {}
        self.invitees: dict[str, Invitee] = {}
        self.event_type_ids: dict[str, str] = {}

    # ----------------------------------------------------------------- URIs
    def user_uri(self, user_id: str) -> str:
        return f"{self.base_url}/users/{user_id}"

    def org_uri(self, org_id: str) -> str:
        return f"{self.base_url}/organizations/{org_id}"

    def subscription_uri(self, sub_id: str) -> str:
        return f"{self.base_url}/webhook_subscriptions/{sub_id}"

    def event_uri(self, event_id: str) -> str:
        return f"{self.base_url}/scheduled_events/{event_id}"

    def invitee_uri(self, invitee: Invitee) -> str:
        return f"{self.event_uri(invitee.event_id)}/invitees/{invitee.id}"

    def uri_id(self, uri: str, kind: str) -> str | None:
        """The id of `uri` when it is one of ours of that kind (query parameters take full URIs)."""
        prefix = f"{self.base_url}/{kind}/"
        if uri.startswith(prefix) and "/" not in uri[len(prefix) :]:
            return uri[len(prefix) :]
        return None

    # ------------------------------------------------------- people & orgs
    def create_organization(self, name: str, org_id: str | None = None) -> Organization:
        org = Organization(id=org_id or new_id(), name=name, created_at=self.clock.now())
        self.organizations[org.id] = org
        return org

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
        if self.user_by_email(email) is not None:
            raise ApiError(409, f"A user with email {email} already exists")
        if organization_id is None:
            organization_id = self.create_organization(f"{name}'s organization").id
            role = role or "owner"
        elif organization_id not in self.organizations:
            raise ApiError(404, f"Organization {organization_id} does not exist")
        now = self.clock.now()
        base_slug = slugify(name)
        slug, n = base_slug, 1
        while any(u.slug == slug for u in self.users.values()):
            n += 1
            slug = f"{base_slug}-{n}"
        user = User(
            id=user_id or new_id(),
            name=name,
            email=email,
            slug=slug,
            timezone=timezone,
            organization_id=organization_id,
            role=role or "user",
            plan=plan,
            created_at=now,
            updated_at=now,
        )
        self.users[user.id] = user
        return user

    def user_by_email(self, email: str) -> User | None:
        wanted = email.strip().lower()
        return next((u for u in self.users.values() if u.email.lower() == wanted), None)

    def get_user(self, user_id: str) -> User:
        user = self.users.get(user_id)
        if user is None:
            raise ApiError(404)
        return user

    # ---------------------------------------------------------------- OAuth
    def client(self, client_id: str) -> OAuthClient | None:
        return self.clients.get(client_id)

    def authenticate_client(self, client_id: str | None, client_secret: str | None) -> OAuthClient:
        client = self.clients.get(client_id or "")
        if client is None or client_secret is None:
            raise OAuthError(401, "invalid_client", "Client authentication failed.")
        if not hmac.compare_digest(client.client_secret.encode(), client_secret.encode()):
            raise OAuthError(401, "invalid_client", "Client authentication failed.")
        return client

    def issue_code(
        self, client: OAuthClient, redirect_uri: str, user: User, code_challenge: str | None
    ) -> str:
        code = secrets.token_urlsafe(32)
        self.codes[code] = AuthorizationCode(
            code=code,
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            user_id=user.id,
            code_challenge=code_challenge,
            expires_at=self.clock.now() + self.settings.authorization_code_ttl,
        )
        return code

    def redeem_code(
        self, client: OAuthClient, code: str, redirect_uri: str | None, verifier: str | None
    ) -> TokenGrant:
        grant = self.codes.get(code)
        if grant is None or grant.client_id != client.client_id:
            raise OAuthError(400, "invalid_grant", "The provided authorization grant is invalid.")
        if grant.used:
            raise OAuthError(400, "invalid_grant", "The authorization code has already been used.")
        if grant.expires_at <= self.clock.now():
            raise OAuthError(400, "invalid_grant", "The authorization code has expired.")
        if redirect_uri != grant.redirect_uri:
            raise OAuthError(
                400, "invalid_grant", "The redirect_uri does not match the authorization request."
            )
        if grant.code_challenge is not None:
            if not verifier:
                raise OAuthError(400, "invalid_grant", "The code_verifier is missing.")
            if not hmac.compare_digest(pkce_s256(verifier), grant.code_challenge):
                raise OAuthError(400, "invalid_grant", "The code_verifier does not match.")
        grant.used = True
        return self._issue_tokens(client.client_id, grant.user_id)

    def refresh(self, client: OAuthClient, refresh_token: str) -> TokenGrant:
        old = self.grants_by_refresh.get(refresh_token)
        if old is None or old.client_id != client.client_id:
            raise OAuthError(400, "invalid_grant", "The provided authorization grant is invalid.")
        if old.refresh_used or old.refresh_revoked:
            raise OAuthError(400, "invalid_grant", "The refresh token is invalid or was revoked.")
        old.refresh_used = True
        return self._issue_tokens(client.client_id, old.user_id)

    def user_for_code(self, code: str) -> str | None:
        grant = self.codes.get(code)
        return grant.user_id if grant else None

    def user_for_refresh(self, refresh_token: str) -> str | None:
        grant = self.grants_by_refresh.get(refresh_token)
        return grant.user_id if grant else None

    def _issue_tokens(self, client_id: str, user_id: str) -> TokenGrant:
        now = self.clock.now()
        grant = TokenGrant(
            access_token=new_secret("sbx_at"),
            refresh_token=new_secret("sbx_rt"),
            client_id=client_id,
            user_id=user_id,
            created_at=now,
            expires_at=now + self.settings.access_token_ttl,
        )
        self.grants_by_access[grant.access_token] = grant
        self.grants_by_refresh[grant.refresh_token] = grant
        return grant

    def token_response(self, grant: TokenGrant) -> dict[str, Any]:
        user = self.users[grant.user_id]
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": grant.access_token,
            "refresh_token": grant.refresh_token,
            "scope": "default",
            "created_at": int(grant.created_at),
            "expires_in": int(grant.expires_at - grant.created_at),
            "owner": self.user_uri(user.id),
        }
        client = self.clients.get(grant.client_id)
        if client is None or not client.legacy_token_response:
            body["organization"] = self.org_uri(user.organization_id)
        return body

    def find_grant(self, token: str) -> TokenGrant | None:
        return self.grants_by_access.get(token) or self.grants_by_refresh.get(token)

    def revoke(self, client: OAuthClient, token: str) -> None:
        grant = self.find_grant(token)
        # RFC 7009: an unknown token is not an error, and a client may not revoke others' tokens.
        if grant is None or grant.client_id != client.client_id:
            return
        grant.access_revoked = True
        grant.refresh_revoked = True

    def introspect(self, client: OAuthClient, token: str) -> dict[str, Any]:
        grant = self.find_grant(token)
        if grant is None or grant.client_id != client.client_id:
            return {"active": False}
        if token == grant.access_token:
            active = not grant.access_revoked and grant.expires_at > self.clock.now()
        else:
            active = not grant.refresh_used and not grant.refresh_revoked
        if not active:
            return {"active": False}
        user = self.users[grant.user_id]
        body: dict[str, Any] = {
            "active": True,
            "scope": "default",
            "client_id": grant.client_id,
            "token_type": "Bearer",
            "iat": int(grant.created_at),
            "owner": self.user_uri(user.id),
            "organization": self.org_uri(user.organization_id),
        }
        if token == grant.access_token:
            body["exp"] = int(grant.expires_at)
        return body

    def bearer_user(self, token: str) -> tuple[TokenGrant, User]:
        grant = self.grants_by_access.get(token)
        if grant is None or grant.access_revoked or grant.expires_at <= self.clock.now():
            raise ApiError(401)
        return grant, self.users[grant.user_id]

    def expire_access_tokens(self, user_id: str) -> int:
        now = self.clock.now()
        count = 0
        for grant in self.grants_by_access.values():
            if grant.user_id == user_id and grant.expires_at > now:
                grant.expires_at = now
                count += 1
        return count

    def revoke_all(self, user_id: str) -> int:
        """The user removed the app in Calendly: every token of theirs stops working."""
        count = 0
        for grant in self.grants_by_access.values():
            if grant.user_id == user_id and not (grant.access_revoked and grant.refresh_revoked):
                grant.access_revoked = True
                grant.refresh_revoked = True
                count += 1
        return count

    # -------------------------------------------------------- subscriptions
    def create_subscription(
        self, caller: User, client_id: str | None, body: dict[str, Any]
    ) -> Subscription:
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

        org_id = self.uri_id(body["organization"], "organizations")
        if org_id is None or org_id not in self.organizations:
            raise invalid_argument("organization", "is not a known organization URI")
        if org_id != caller.organization_id:
            raise ApiError(403, NO_PERMISSION_MESSAGE)
        user_id: str | None = None
        if scope == "user":
            user_id = self.uri_id(body["user"], "users")
            if user_id is None or user_id not in self.users:
                raise invalid_argument("user", "is not a known user URI")
            if user_id != caller.id and not (
                caller.is_admin and self.users[user_id].organization_id == caller.organization_id
            ):
                raise ApiError(403, NO_PERMISSION_MESSAGE)
        elif not caller.is_admin:
            raise ApiError(403, NO_PERMISSION_MESSAGE)
        if not caller.paid:
            raise ApiError(403, PLAN_UPGRADE_MESSAGE)
        if self._hook_conflict(body["url"], org_id, user_id):
            raise ApiError(409, HOOK_EXISTS_MESSAGE)

        now = self.clock.now()
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

    def _hook_conflict(self, url: str, org_id: str, user_id: str | None) -> bool:
        mode = self.settings.hook_uniqueness
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

    def visible_subscription(self, caller: User, sub_id: str) -> Subscription:
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            raise ApiError(404)
        if sub.organization_id != caller.organization_id:
            raise ApiError(403, NO_PERMISSION_MESSAGE)
        if sub.scope == "user" and sub.user_id != caller.id and not caller.is_admin:
            raise ApiError(403, NO_PERMISSION_MESSAGE)
        return sub

    def list_subscriptions(self, caller: User, query: dict[str, str]) -> list[Subscription]:
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
        org_id = self.uri_id(query["organization"], "organizations")
        if org_id is None or org_id not in self.organizations:
            raise invalid_argument("organization", "is not a known organization URI")
        if org_id != caller.organization_id:
            raise ApiError(403, NO_PERMISSION_MESSAGE)
        subs = [
            s
            for s in self.subscriptions.values()
            if s.organization_id == org_id and s.scope == scope
        ]
        if scope == "user":
            user_id = self.uri_id(query["user"], "users")
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

    # --------------------------------------------------- scheduled events
    def event_type_id(self, host_id: str, name: str) -> str:
        key = f"{host_id}:{name}"
        if key not in self.event_type_ids:
            self.event_type_ids[key] = new_id()
        return self.event_type_ids[key]

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
        if location_type not in LOCATION_TYPES:
            raise invalid_argument("location_type", f"must be one of {sorted(LOCATION_TYPES)}")
        if not invitees:
            raise invalid_argument("invitees", "at least one invitee is required")
        limit = max(invitee_limit, len(invitees))
        now = self.clock.now()
        event = ScheduledEvent(
            id=new_id(),
            name=name,
            host_id=host.id,
            organization_id=host.organization_id,
            event_type_id=self.event_type_id(host.id, name),
            start_time=start_time,
            end_time=start_time + duration_minutes * 60,
            location=LOCATION_TYPES[location_type](),
            invitee_limit=limit,
            created_at=now,
            updated_at=now,
        )
        self.events[event.id] = event
        notes = [
            self._add_invitee(event, email, invitee_name, timezone, questions_and_answers)
            for invitee_name, email in invitees
        ]
        return event, notes

    def add_invitee(
        self, event: ScheduledEvent, name: str, email: str, timezone: str = "America/New_York"
    ) -> Notification:
        if event.status != "active":
            raise ApiError(400, "The event is canceled")
        active = sum(1 for i in event.invitee_ids if self.invitees[i].status == "active")
        if active >= event.invitee_limit:
            raise ApiError(400, "The event is full")
        return self._add_invitee(event, email, name, timezone, None)

    def _add_invitee(
        self,
        event: ScheduledEvent,
        email: str,
        name: str,
        timezone: str,
        qa: list[dict[str, Any]] | None,
        old_invitee_id: str | None = None,
    ) -> Notification:
        now = self.clock.now()
        invitee = Invitee(
            id=new_id(),
            event_id=event.id,
            email=email,
            name=name,
            timezone=timezone,
            created_at=now,
            updated_at=now,
            questions_and_answers=list(qa or []),
            old_invitee_id=old_invitee_id,
        )
        self.invitees[invitee.id] = invitee
        event.invitee_ids.append(invitee.id)
        event.updated_at = now
        return Notification("invitee.created", invitee.id, now)

    def get_invitee(self, invitee_id: str) -> Invitee:
        invitee = self.invitees.get(invitee_id)
        if invitee is None:
            raise ApiError(404)
        return invitee

    def get_event(self, event_id: str) -> ScheduledEvent:
        event = self.events.get(event_id)
        if event is None:
            raise ApiError(404)
        return event

    def cancel_invitee(
        self,
        invitee: Invitee,
        canceler_type: CancelerType,
        reason: str | None,
        *,
        rescheduled_to: str | None = None,
    ) -> Notification:
        if invitee.status == "canceled":
            raise ApiError(400, "The invitee is already canceled")
        event = self.events[invitee.event_id]
        now = self.clock.now()
        canceled_by = self.users[event.host_id].name if canceler_type == "host" else invitee.name
        invitee.status = "canceled"
        invitee.updated_at = now
        invitee.cancellation = Cancellation(canceled_by, reason, canceler_type, now)
        if rescheduled_to is not None:
            invitee.rescheduled = True
            invitee.new_invitee_id = rescheduled_to
        if all(self.invitees[i].status == "canceled" for i in event.invitee_ids):
            event.status = "canceled"
            event.cancellation = invitee.cancellation
        event.updated_at = now
        return Notification("invitee.canceled", invitee.id, now)

    def cancel_event(self, event: ScheduledEvent, reason: str | None) -> list[Notification]:
        active = [self.invitees[i] for i in event.invitee_ids]
        return [self.cancel_invitee(i, "host", reason) for i in active if i.status == "active"]

    def reschedule(
        self, invitee: Invitee, start_time: float, duration_minutes: int | None
    ) -> tuple[Notification, Notification]:
        """The invitee moves to a new time: a new event and invitee, the old one canceled.

        Returns (canceled, created) notifications; the caller chooses the delivery order.
        """
        if invitee.status == "canceled":
            raise ApiError(400, "The invitee is already canceled")
        old_event = self.events[invitee.event_id]
        duration = (
            duration_minutes * 60
            if duration_minutes is not None
            else old_event.end_time - old_event.start_time
        )
        host = self.users[old_event.host_id]
        now = self.clock.now()
        new_event = ScheduledEvent(
            id=new_id(),
            name=old_event.name,
            host_id=host.id,
            organization_id=old_event.organization_id,
            event_type_id=old_event.event_type_id,
            start_time=start_time,
            end_time=start_time + duration,
            location=dict(old_event.location),
            invitee_limit=1,
            created_at=now,
            updated_at=now,
        )
        self.events[new_event.id] = new_event
        created = self._add_invitee(
            new_event,
            invitee.email,
            invitee.name,
            invitee.timezone,
            invitee.questions_and_answers,
            old_invitee_id=invitee.id,
        )
        canceled = self.cancel_invitee(
            invitee, "invitee", "Rescheduled", rescheduled_to=created.invitee_id
        )
        return canceled, created

    def mark_no_show(self, invitee: Invitee) -> Notification:
        if invitee.no_show is not None:
            raise ApiError(400, "The invitee is already marked as a no-show")
        now = self.clock.now()
        invitee.no_show = NoShow(id=new_id(), created_at=now)
        invitee.updated_at = now
        return Notification("invitee_no_show.created", invitee.id, now)

    def unmark_no_show(self, invitee: Invitee) -> tuple[Notification, NoShow]:
        if invitee.no_show is None:
            raise ApiError(400, "The invitee is not marked as a no-show")
        now = self.clock.now()
        removed = invitee.no_show
        invitee.no_show = None
        invitee.updated_at = now
        return Notification("invitee_no_show.deleted", invitee.id, now), removed

    def event_visible(self, caller: User, event: ScheduledEvent) -> bool:
        return event.host_id == caller.id or (
            caller.is_admin and event.organization_id == caller.organization_id
        )

    # -------------------------------------------------------------- shapes
    def user_json(self, user: User) -> dict[str, Any]:
        return {
            "uri": self.user_uri(user.id),
            "name": user.name,
            "slug": user.slug,
            "email": user.email,
            "scheduling_url": f"{self.base_url}/_sandbox/book/{user.slug}",
            "timezone": user.timezone,
            "avatar_url": None,
            "locale": "en",
            "time_notation": "24h",
            "resource_type": "User",
            "created_at": iso(user.created_at),
            "updated_at": iso(user.updated_at),
            "current_organization": self.org_uri(user.organization_id),
        }

    def subscription_json(self, sub: Subscription) -> dict[str, Any]:
        return {
            "uri": self.subscription_uri(sub.id),
            "callback_url": sub.callback_url,
            "created_at": iso(sub.created_at),
            "updated_at": iso(sub.updated_at),
            "retry_started_at": iso(sub.retry_started_at) if sub.retry_started_at else None,
            "state": sub.state,
            "events": list(sub.events),
            "scope": sub.scope,
            "organization": self.org_uri(sub.organization_id),
            "user": self.user_uri(sub.user_id) if sub.user_id else None,
            "group": sub.group,
            "creator": self.user_uri(sub.creator_id),
        }

    def _cancellation_json(self, c: Cancellation) -> dict[str, Any]:
        return {
            "canceled_by": c.canceled_by,
            "reason": c.reason,
            "canceler_type": c.canceler_type,
            "created_at": iso(c.created_at),
        }

    def event_json(self, event: ScheduledEvent) -> dict[str, Any]:
        host = self.users[event.host_id]
        invitees = [self.invitees[i] for i in event.invitee_ids]
        active = sum(1 for i in invitees if i.status == "active")
        body: dict[str, Any] = {
            "uri": self.event_uri(event.id),
            "name": event.name,
            "status": event.status,
            "start_time": iso(event.start_time),
            "end_time": iso(event.end_time),
            "event_type": f"{self.base_url}/event_types/{event.event_type_id}",
            "location": dict(event.location),
            "invitees_counter": {
                "total": len(invitees),
                "active": active,
                "limit": event.invitee_limit,
            },
            "created_at": iso(event.created_at),
            "updated_at": iso(event.updated_at),
            "event_memberships": [
                {"user": self.user_uri(host.id), "user_email": host.email, "user_name": host.name}
            ],
            "event_guests": [],
            "calendar_event": None,
            "meeting_notes_plain": None,
            "meeting_notes_html": None,
        }
        if event.cancellation is not None:
            body["cancellation"] = self._cancellation_json(event.cancellation)
        return body

    def invitee_json(self, invitee: Invitee) -> dict[str, Any]:
        def other(invitee_id: str | None) -> str | None:
            return self.invitee_uri(self.invitees[invitee_id]) if invitee_id else None

        first, _, last = invitee.name.partition(" ")
        body: dict[str, Any] = {
            "uri": self.invitee_uri(invitee),
            "event": self.event_uri(invitee.event_id),
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
            "cancel_url": f"{self.base_url}/cancellations/{invitee.id}",
            "reschedule_url": f"{self.base_url}/reschedulings/{invitee.id}",
            "routing_form_submission": None,
            "payment": None,
            "no_show": (
                {
                    "uri": f"{self.base_url}/invitee_no_shows/{invitee.no_show.id}",
                    "created_at": iso(invitee.no_show.created_at),
                }
                if invitee.no_show
                else None
            ),
            "reconfirmation": None,
            "scheduling_method": None,
            "invitee_scheduled_by": None,
        }
        if invitee.cancellation is not None:
            body["cancellation"] = self._cancellation_json(invitee.cancellation)
        return body

    def webhook_payload(self, note: Notification, removed_no_show: NoShow | None = None) -> Any:
        """The `payload` of a delivery, in the current or the pre-2022 shape."""
        invitee = self.invitees[note.invitee_id]
        body = self.invitee_json(invitee)
        if note.event == "invitee_no_show.deleted" and removed_no_show is not None:
            body["no_show"] = {
                "uri": f"{self.base_url}/invitee_no_shows/{removed_no_show.id}",
                "created_at": iso(removed_no_show.created_at),
            }
        if self.settings.payload_style == "legacy":
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
            body["scheduled_event"] = self.event_json(self.events[invitee.event_id])
        return body

    def subscribers(self, note: Notification) -> list[Subscription]:
        """Active subscriptions that hear about `note`."""
        invitee = self.invitees[note.invitee_id]
        event = self.events[invitee.event_id]
        return [
            s
            for s in self.subscriptions.values()
            if s.state == "active"
            and note.event in s.events
            and (
                (s.scope == "user" and s.user_id == event.host_id)
                or (s.scope == "organization" and s.organization_id == event.organization_id)
            )
        ]

    def signing_key(self, sub: Subscription) -> str | None:
        if sub.signing_key:
            return sub.signing_key
        client = self.clients.get(sub.client_id or "")
        return client.webhook_signing_key if client else None
