"""An in-memory Calendly for unit tests: records calls, can be told to fail and be steered."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode

from msgspec.structs import replace

from domain.errors import (
    AlreadyExists,
    CalendlyError,
    InvalidGrant,
    PermissionDenied,
    PlanRequired,
    ResourceNotFound,
    TokenRejected,
)
from domain.meetings import Cancellation, Invitee, Meeting, MeetingStatus
from domain.model import CalendlyAccount, TokenSet
from domain.ports import CalendlyApi, Clock, GrantedTokens, NewSubscription, Subscription
from domain.secret import Secret
from domain.usecases.start_connect import pkce_challenge

BASE = "https://api.calendly.test"


@dataclass
class FakeUser:
    uuid: str
    email: str
    name: str
    paid: bool = True

    @property
    def uri(self) -> str:
        return f"{BASE}/users/{self.uuid}"

    @property
    def organization_uri(self) -> str:
        return f"{BASE}/organizations/org-{self.uuid}"


@dataclass
class FakeGrant:
    user: FakeUser
    access: str
    refresh: str
    expires_at: datetime
    refresh_used: bool = False
    revoked: bool = False


@dataclass
class FakeSubscription:
    uri: str
    callback_url: str
    events: tuple[str, ...]
    user: FakeUser
    signing_key: str
    state: str = "active"


@dataclass
class FakeEvent:
    """A scheduled event with its host; its invitees live in `FakeCalendlyApi.invitees`."""

    host: FakeUser
    meeting: Meeting
    invitee_uris: list[str] = field(default_factory=list)


@dataclass
class FakeCode:
    user: FakeUser
    challenge: str
    redirect_uri: str
    used: bool = False


@dataclass
class FakeCalendlyApi(CalendlyApi):
    """Behaves like the sandbox for what the use cases need; contract tests check that."""

    clock: Clock
    users: dict[str, FakeUser] = field(default_factory=dict)
    grants: list[FakeGrant] = field(default_factory=list)
    subscriptions: dict[str, FakeSubscription] = field(default_factory=dict)
    codes: dict[str, FakeCode] = field(default_factory=dict)
    events: dict[str, FakeEvent] = field(default_factory=dict)
    invitees: dict[str, Invitee] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    failures: dict[str, list[CalendlyError]] = field(default_factory=dict)
    # Run once when the method next answers, just before the answer is returned.
    on_answer: dict[str, Callable[[], None]] = field(default_factory=dict)
    token_ttl: timedelta = timedelta(hours=2)
    # Subscriptions created or deleted (refused attempts change nothing, so they do not count).
    mutations: int = 0
    # The rate limit each access token's last answer announced (X-RateLimit-Limit).
    announced: dict[str, int] = field(default_factory=dict)
    # How events and invitees are named: Calendly's UUIDs today, 16 characters in old payloads;
    # "short" keeps test output readable. Code must never depend on which (API_FACTS: never
    # validate the format).
    id_style: Literal["short", "legacy16", "uuid"] = "short"
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _id(self, prefix: str) -> str:
        n = next(self._ids)
        if self.id_style == "uuid":
            return str(uuid.UUID(int=n))
        if self.id_style == "legacy16":
            return f"{prefix.upper()}{n:015X}"
        return f"{prefix}{n}"

    # ---------------------------------------------------------- steering
    def add_user(self, email: str, *, paid: bool = True, name: str = "Host") -> FakeUser:
        user = FakeUser(uuid=f"u{next(self._ids)}", email=email, name=name, paid=paid)
        self.users[user.uuid] = user
        return user

    def issue_code(self, user: FakeUser, challenge: str, redirect_uri: str) -> str:
        code = f"code-{next(self._ids)}"
        self.codes[code] = FakeCode(user=user, challenge=challenge, redirect_uri=redirect_uri)
        return code

    def fail_next(self, method: str, error: CalendlyError, times: int = 1) -> None:
        self.failures.setdefault(method, []).extend([error] * times)

    def count(self, method: str | None = None) -> int:
        return len(self.calls) if method is None else Counter(self.calls)[method]

    def writes(self) -> int:
        return self.mutations

    def expire_tokens(self, user: FakeUser) -> None:
        for grant in self.grants:
            if grant.user is user:
                grant.expires_at = self.clock.now() - timedelta(seconds=1)

    def revoke_all(self, user: FakeUser) -> None:
        for grant in self.grants:
            if grant.user is user:
                grant.revoked = True

    def active_subscriptions(self, user: FakeUser) -> list[FakeSubscription]:
        return [s for s in self.subscriptions.values() if s.user is user and s.state == "active"]

    def disable(self, subscription_uri: str) -> None:
        """Calendly gave up on the callback URL after a day of failed deliveries."""
        self.subscriptions[subscription_uri].state = "disabled"

    def book(
        self,
        user: FakeUser,
        start: datetime,
        *,
        duration: timedelta = timedelta(minutes=30),
        name: str = "30 Minute Meeting",
        email: str = "grace@example.org",
        invitee_name: str = "Grace Guest",
        location: dict[str, Any] | None = None,
    ) -> tuple[str, str]:
        """`user` is booked by one invitee: returns (event URI, invitee URI)."""
        event_uri = f"{BASE}/scheduled_events/{self._id('e')}"
        self.events[event_uri] = FakeEvent(
            host=user,
            meeting=Meeting(
                event_uri=event_uri,
                name=name,
                start_time=start,
                end_time=start + duration,
                location=location if location is not None else {"type": "zoom"},
            ),
        )
        return event_uri, self.add_invitee(event_uri, email=email, name=invitee_name)

    def add_invitee(
        self,
        event_uri: str,
        *,
        email: str,
        name: str = "Guest",
        old_invitee_uri: str | None = None,
    ) -> str:
        """One more invitee of an event (a group event has several); returns its URI."""
        event = self.events[event_uri]
        invitee_uri = f"{event_uri}/invitees/{self._id('i')}"
        self.invitees[invitee_uri] = Invitee(
            invitee_uri=invitee_uri,
            event_uri=event_uri,
            email=email,
            name=name,
            timezone="America/New_York",
            old_invitee_uri=old_invitee_uri,
        )
        event.invitee_uris.append(invitee_uri)
        return invitee_uri

    def cancel(
        self,
        invitee_uri: str,
        *,
        canceler_type: str = "invitee",
        reason: str | None = None,
        new_invitee_uri: str | None = None,
    ) -> None:
        """The invitee (or the host) cancels; the event is canceled when nobody is left."""
        invitee = self.invitees[invitee_uri]
        event = self.events[invitee.event_uri]
        canceled_by = event.host.name if canceler_type == "host" else invitee.name
        cancellation = Cancellation(
            canceled_by=canceled_by,
            reason=reason,
            canceler_type=canceler_type,
            canceled_at=self.clock.now(),
        )
        self.invitees[invitee_uri] = replace(
            invitee,
            status=MeetingStatus.CANCELED,
            cancellation=cancellation,
            rescheduled=new_invitee_uri is not None,
            new_invitee_uri=new_invitee_uri,
        )
        if all(self.invitees[i].status is MeetingStatus.CANCELED for i in event.invitee_uris):
            event.meeting = replace(
                event.meeting, status=MeetingStatus.CANCELED, cancellation=cancellation
            )

    def reschedule(self, invitee_uri: str, start: datetime) -> tuple[str, str]:
        """The invitee moves to `start`: a new event and invitee, the old invitee canceled."""
        old = self.invitees[invitee_uri]
        old_meeting = self.events[old.event_uri].meeting
        duration = (
            old_meeting.end_time - old_meeting.start_time
            if old_meeting.end_time is not None and old_meeting.start_time is not None
            else timedelta(minutes=30)
        )
        event_uri, new_uri = self.book(
            self.events[old.event_uri].host,
            start,
            duration=duration,
            name=old_meeting.name or "30 Minute Meeting",
            email=old.email or "",
            invitee_name=old.name or "",
            location=old_meeting.location,
        )
        self.invitees[new_uri] = replace(self.invitees[new_uri], old_invitee_uri=invitee_uri)
        self.cancel(invitee_uri, reason="Rescheduled", new_invitee_uri=new_uri)
        return event_uri, new_uri

    def mark_no_show(self, invitee_uri: str, flag: bool = True) -> None:
        """The host marks (or unmarks) the invitee as a no-show, now."""
        invitee = self.invitees[invitee_uri]
        self.invitees[invitee_uri] = replace(
            invitee, no_show=flag, no_show_changed_at=self.clock.now() if flag else None
        )

    # --------------------------------------------------------- internals
    def _enter(self, method: str) -> None:
        self.calls.append(method)
        queued = self.failures.get(method)
        if queued:
            raise queued.pop(0)

    def _grant(self, user: FakeUser) -> GrantedTokens:
        n = next(self._ids)
        grant = FakeGrant(
            user=user,
            access=f"at-{n}",
            refresh=f"rt-{n}",
            expires_at=self.clock.now() + self.token_ttl,
        )
        self.grants.append(grant)
        return GrantedTokens(
            tokens=TokenSet(
                access_token=Secret(grant.access),
                refresh_token=Secret(grant.refresh),
                expires_at=grant.expires_at,
            ),
            owner_uri=user.uri,
            organization_uri=user.organization_uri,
        )

    def _bearer(self, token: Secret) -> FakeUser:
        for grant in self.grants:
            if grant.access == token.reveal():
                if grant.revoked or grant.expires_at <= self.clock.now():
                    break
                self.announced[grant.access] = 500 if grant.user.paid else 50
                return grant.user
        raise TokenRejected(401, {"title": "Unauthenticated"})

    # -------------------------------------------------------------- port
    def announced_limit(self, access_token: Secret) -> int | None:
        """As the adapter reads the sandbox's headers: what the last call with this token was
        told (500 a minute on a paid plan, 50 on Free); nothing before a call with it."""
        return self.announced.get(access_token.reveal())

    def authorization_url(self, *, state: str, code_challenge: str, redirect_uri: str) -> str:
        query = urlencode(
            {"state": state, "code_challenge": code_challenge, "redirect_uri": redirect_uri}
        )
        return f"https://auth.calendly.test/oauth/authorize?{query}"

    async def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: Secret
    ) -> GrantedTokens:
        self._enter("exchange_code")
        found = self.codes.get(code)
        if (
            found is None
            or found.used
            or found.redirect_uri != redirect_uri
            or pkce_challenge(code_verifier) != found.challenge
        ):
            raise InvalidGrant(400, {"error": "invalid_grant"})
        found.used = True
        return self._grant(found.user)

    async def refresh(self, refresh_token: Secret) -> GrantedTokens:
        self._enter("refresh")
        for grant in self.grants:
            if grant.refresh == refresh_token.reveal():
                if grant.refresh_used or grant.revoked:
                    break
                grant.refresh_used = True
                granted = self._grant(grant.user)
                if (hook := self.on_answer.pop("refresh", None)) is not None:
                    hook()
                return granted
        raise InvalidGrant(400, {"error": "invalid_grant"})

    async def revoke(self, token: Secret) -> None:
        self._enter("revoke")
        for grant in self.grants:
            if token.reveal() in (grant.access, grant.refresh):
                grant.revoked = True

    async def current_user(self, access_token: Secret) -> CalendlyAccount:
        self._enter("current_user")
        user = self._bearer(access_token)
        return CalendlyAccount(
            user_uri=user.uri,
            organization_uri=user.organization_uri,
            email=user.email,
            name=user.name,
        )

    async def list_subscriptions(
        self, access_token: Secret, *, organization_uri: str, user_uri: str
    ) -> list[Subscription]:
        self._enter("list_subscriptions")
        self._bearer(access_token)
        return [
            Subscription(
                uri=s.uri,
                callback_url=s.callback_url,
                events=s.events,
                state=s.state,
                scope="user",
                user_uri=s.user.uri,
            )
            for s in self.subscriptions.values()
            if s.user.uri == user_uri
        ]

    async def create_subscription(
        self, access_token: Secret, subscription: NewSubscription
    ) -> Subscription:
        self._enter("create_subscription")
        user = self._bearer(access_token)
        if not user.paid:
            raise PlanRequired(403, {"message": "Please upgrade your Calendly account to Standard"})
        if any(
            s.callback_url == subscription.callback_url and s.user is user
            for s in self.subscriptions.values()
        ):
            raise AlreadyExists(409, {"message": "Hook with this url already exists"})
        uri = f"{BASE}/webhook_subscriptions/s{next(self._ids)}"
        self.mutations += 1
        self.subscriptions[uri] = FakeSubscription(
            uri=uri,
            callback_url=subscription.callback_url,
            events=subscription.events,
            user=user,
            signing_key=subscription.signing_key.reveal(),
        )
        return Subscription(
            uri=uri,
            callback_url=subscription.callback_url,
            events=subscription.events,
            state="active",
            scope="user",
            user_uri=user.uri,
        )

    async def delete_subscription(self, access_token: Secret, uri: str) -> None:
        self._enter("delete_subscription")
        self._bearer(access_token)
        if self.subscriptions.pop(uri, None) is None:
            raise ResourceNotFound(404, {"title": "Resource Not Found"})
        self.mutations += 1

    async def get_subscription(self, access_token: Secret, uri: str) -> Subscription:
        self._enter("get_subscription")
        user = self._bearer(access_token)
        found = self.subscriptions.get(uri)
        if found is None:
            raise ResourceNotFound(404, {"title": "Resource Not Found"})
        if found.user is not user:
            raise PermissionDenied(403, {"title": "Permission Denied"})
        return Subscription(
            uri=found.uri,
            callback_url=found.callback_url,
            events=found.events,
            state=found.state,
            scope="user",
            user_uri=found.user.uri,
        )

    async def list_scheduled_events(
        self,
        access_token: Secret,
        *,
        user_uri: str,
        min_start_time: datetime,
        max_start_time: datetime | None = None,
    ) -> list[Meeting]:
        self._enter("list_scheduled_events")
        user = self._bearer(access_token)
        if user_uri != user.uri:
            raise PermissionDenied(403, {"title": "Permission Denied"})
        low = _aware(min_start_time)
        high = _aware(max_start_time) if max_start_time is not None else None
        found = [
            e.meeting
            for e in self.events.values()
            if e.host is user
            and e.meeting.start_time is not None
            and low <= e.meeting.start_time
            and (high is None or e.meeting.start_time < high)
        ]
        return sorted(found, key=lambda m: (m.start_time, m.event_uri))

    async def get_scheduled_event(self, access_token: Secret, event_uri: str) -> Meeting:
        self._enter("get_scheduled_event")
        return self._visible_event(access_token, event_uri).meeting

    async def list_invitees(self, access_token: Secret, event_uri: str) -> list[Invitee]:
        self._enter("list_invitees")
        event = self._visible_event(access_token, event_uri)
        return [self.invitees[i] for i in event.invitee_uris]

    def _visible_event(self, access_token: Secret, event_uri: str) -> FakeEvent:
        """The event, if the token's user hosts it: 404 unknown, 403 someone else's."""
        user = self._bearer(access_token)
        event = self.events.get(event_uri)
        if event is None:
            raise ResourceNotFound(404, {"title": "Resource Not Found"})
        if event.host is not user:
            raise PermissionDenied(403, {"title": "Permission Denied"})
        return event


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
