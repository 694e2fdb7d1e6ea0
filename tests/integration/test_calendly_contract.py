"""The same CalendlyApi behaviours against FakeCalendlyApi and against the real adapter talking
to the sandbox: the fake used by the unit tests cannot drift from Calendly's documented rules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aiohttp
import pytest

from adapters.calendly import AiohttpCalendlyApi
from domain.errors import (
    AlreadyExists,
    InvalidGrant,
    PermissionDenied,
    PlanRequired,
    ResourceNotFound,
    TokenRejected,
)
from domain.meetings import Invitee, Meeting, MeetingStatus
from domain.ports import CalendlyApi, GrantedTokens, NewSubscription
from domain.secret import Secret
from domain.usecases.start_connect import pkce_challenge
from tests.fakes.calendly import FakeCalendlyApi
from tests.fakes.clock import FixedClock
from tests.support.sandbox import SandboxDriver

T0 = datetime(2030, 3, 5, 14, 30, tzinfo=UTC)
DAY = timedelta(days=1)
# The sandbox adapter reads small pages, so every listing of three or more follows page tokens.
SANDBOX_PAGE_SIZE = 2


def last_segment(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


class Steering(Protocol):
    """What happens in Calendly without us: bookings, cancellations, a subscription given up."""

    async def book(
        self, owner_uri: str, start: datetime, email: str = ..., seats: int = ...
    ) -> tuple[str, str]:
        """Book the owner for 30 minutes at `start`; returns (event URI, invitee URI).

        `seats` above one makes a group event that `add_invitee` can fill.
        """
        ...

    async def add_invitee(self, event_uri: str, email: str) -> str: ...

    async def cancel(self, invitee_uri: str, canceler_type: str, reason: str) -> None: ...

    async def reschedule(self, invitee_uri: str, start: datetime) -> tuple[str, str]: ...

    async def mark_no_show(self, invitee_uri: str) -> None: ...

    async def disable(self, subscription_uri: str) -> None: ...


@dataclass
class FakeSteering(Steering):
    fake: FakeCalendlyApi

    async def book(
        self, owner_uri: str, start: datetime, email: str = "grace@example.org", seats: int = 1
    ) -> tuple[str, str]:
        # The fake keeps no seat limit: any event takes more invitees.
        return self.fake.book(self.fake.users[last_segment(owner_uri)], start, email=email)

    async def add_invitee(self, event_uri: str, email: str) -> str:
        return self.fake.add_invitee(event_uri, email=email)

    async def cancel(self, invitee_uri: str, canceler_type: str, reason: str) -> None:
        self.fake.cancel(invitee_uri, canceler_type=canceler_type, reason=reason)

    async def reschedule(self, invitee_uri: str, start: datetime) -> tuple[str, str]:
        return self.fake.reschedule(invitee_uri, start)

    async def mark_no_show(self, invitee_uri: str) -> None:
        self.fake.mark_no_show(invitee_uri)

    async def disable(self, subscription_uri: str) -> None:
        self.fake.disable(subscription_uri)


@dataclass
class SandboxSteering(Steering):
    sandbox: SandboxDriver

    async def book(
        self, owner_uri: str, start: datetime, email: str = "grace@example.org", seats: int = 1
    ) -> tuple[str, str]:
        booked = await self.sandbox.book(
            last_segment(owner_uri),
            start_time=start.isoformat(),
            invitees=[{"name": "Grace Guest", "email": email}],
            invitee_limit=seats,
        )
        return booked["event"]["uri"], booked["invitees"][0]["uri"]

    async def add_invitee(self, event_uri: str, email: str) -> str:
        added = await self._post(
            f"/_sandbox/events/{last_segment(event_uri)}/invitees", name="Guest", email=email
        )
        uri: str = added["invitee"]["uri"]
        return uri

    async def cancel(self, invitee_uri: str, canceler_type: str, reason: str) -> None:
        await self._post(
            f"/_sandbox/invitees/{last_segment(invitee_uri)}/cancel",
            canceler_type=canceler_type,
            reason=reason,
        )

    async def reschedule(self, invitee_uri: str, start: datetime) -> tuple[str, str]:
        moved = await self._post(
            f"/_sandbox/invitees/{last_segment(invitee_uri)}/reschedule",
            start_time=start.isoformat(),
        )
        return moved["event"]["uri"], moved["new_invitee"]["uri"]

    async def mark_no_show(self, invitee_uri: str) -> None:
        await self._post(f"/_sandbox/invitees/{last_segment(invitee_uri)}/no_show")

    async def disable(self, subscription_uri: str) -> None:
        path = f"/_sandbox/subscriptions/{last_segment(subscription_uri)}/disable"
        await self.sandbox.control("POST", path, expect=200)

    async def _post(self, path: str, **body: Any) -> dict[str, Any]:
        answer: dict[str, Any] = await self.sandbox.control("POST", path, body, expect=201)
        return answer


@dataclass
class Harness:
    api: CalendlyApi
    redirect_uri: str
    # Walks a person through consent and returns the authorization code for `verifier`.
    code: Callable[[str, bool, Secret], Awaitable[str]]
    steer: Steering

    async def grant(self, email: str, paid: bool) -> GrantedTokens:
        verifier = Secret("v" * 64)
        code = await self.code(email, paid, verifier)
        return await self.api.exchange_code(
            code=code, redirect_uri=self.redirect_uri, code_verifier=verifier
        )


@pytest.fixture(params=["fake", "sandbox"])
async def harness(request: pytest.FixtureRequest, sandbox: SandboxDriver) -> AsyncIterator[Harness]:
    if request.param == "fake":
        fake = FakeCalendlyApi(clock=FixedClock())
        fake_redirect = "https://app.example/cb"

        async def fake_code(email: str, paid: bool, verifier: Secret) -> str:
            user = fake.add_user(email, paid=paid)
            return fake.issue_code(user, pkce_challenge(verifier), fake_redirect)

        yield Harness(
            api=fake, redirect_uri=fake_redirect, code=fake_code, steer=FakeSteering(fake)
        )
        return
    async with aiohttp.ClientSession() as session:
        api = AiohttpCalendlyApi(
            session,
            client_id=sandbox.client.client_id,
            client_secret=Secret(sandbox.client.client_secret),
            auth_base_url=sandbox.url,
            api_base_url=sandbox.url,
            retry_base_delay=0.01,
            page_size=SANDBOX_PAGE_SIZE,
        )

        async def sandbox_code(email: str, paid: bool, verifier: Secret) -> str:
            plan = "standard" if paid else "free"
            return await sandbox.code_for(email, pkce_challenge(verifier), sandbox_plan=plan)

        yield Harness(
            api=api,
            redirect_uri=sandbox.client.redirect_uris[0],
            code=sandbox_code,
            steer=SandboxSteering(sandbox),
        )


def new_subscription(granted: GrantedTokens, url: str, me_org: str) -> NewSubscription:
    return NewSubscription(
        callback_url=url,
        events=("invitee.created", "invitee.canceled"),
        organization_uri=me_org,
        user_uri=granted.owner_uri,
        signing_key=Secret("sub-key"),
    )


async def test_a_grant_names_its_owner_and_reads_the_user(harness: Harness) -> None:
    granted = await harness.grant("ada@example.com", True)
    me = await harness.api.current_user(granted.tokens.access_token)
    assert me.user_uri == granted.owner_uri
    assert me.email == "ada@example.com"
    assert granted.organization_uri in (None, me.organization_uri)


async def test_refresh_tokens_rotate_and_are_single_use(harness: Harness) -> None:
    granted = await harness.grant("ada@example.com", True)
    fresh = await harness.api.refresh(granted.tokens.refresh_token)
    assert fresh.tokens.refresh_token != granted.tokens.refresh_token
    with pytest.raises(InvalidGrant):
        await harness.api.refresh(granted.tokens.refresh_token)
    await harness.api.current_user(fresh.tokens.access_token)


async def test_a_revoked_grant_is_rejected(harness: Harness) -> None:
    granted = await harness.grant("ada@example.com", True)
    await harness.api.revoke(granted.tokens.refresh_token)
    with pytest.raises(TokenRejected):
        await harness.api.current_user(granted.tokens.access_token)
    with pytest.raises(InvalidGrant):
        await harness.api.refresh(granted.tokens.refresh_token)


async def test_subscriptions_are_created_listed_and_deleted(harness: Harness) -> None:
    granted = await harness.grant("ada@example.com", True)
    token = granted.tokens.access_token
    me = await harness.api.current_user(token)
    sub = await harness.api.create_subscription(
        token, new_subscription(granted, "https://app.example/hooks/a", me.organization_uri)
    )
    assert sub.is_active
    assert sub.user_uri == me.user_uri
    listed = await harness.api.list_subscriptions(
        token, organization_uri=me.organization_uri, user_uri=me.user_uri
    )
    assert [s.uri for s in listed] == [sub.uri]
    with pytest.raises(AlreadyExists):
        await harness.api.create_subscription(
            token, new_subscription(granted, "https://app.example/hooks/a", me.organization_uri)
        )
    await harness.api.delete_subscription(token, sub.uri)
    with pytest.raises(ResourceNotFound):
        await harness.api.delete_subscription(token, sub.uri)
    assert (
        await harness.api.list_subscriptions(
            token, organization_uri=me.organization_uri, user_uri=me.user_uri
        )
        == []
    )


async def test_a_free_plan_cannot_subscribe_but_can_read(harness: Harness) -> None:
    granted = await harness.grant("fred@example.com", False)
    token = granted.tokens.access_token
    me = await harness.api.current_user(token)
    with pytest.raises(PlanRequired):
        await harness.api.create_subscription(
            token, new_subscription(granted, "https://app.example/hooks/f", me.organization_uri)
        )
    assert (
        await harness.api.list_subscriptions(
            token, organization_uri=me.organization_uri, user_uri=me.user_uri
        )
        == []
    )


async def test_answers_announce_the_plans_limit(harness: Harness) -> None:
    # What a plan change shows through without a call of its own (DR-45): 500 a minute on a
    # paid plan, 50 on Free, as Calendly's X-RateLimit-Limit says.
    paid = (await harness.grant("ada@example.com", True)).tokens.access_token
    free = (await harness.grant("fred@example.com", False)).tokens.access_token
    await harness.api.current_user(paid)
    await harness.api.current_user(free)
    assert harness.api.announced_limit(paid) == 500
    assert harness.api.announced_limit(free) == 50


async def test_a_code_works_once_and_only_with_its_verifier(harness: Harness) -> None:
    verifier = Secret("w" * 64)
    code = await harness.code("x@example.com", True, verifier)
    with pytest.raises(InvalidGrant):
        await harness.api.exchange_code(
            code=await harness.code("y@example.com", True, verifier),
            redirect_uri=harness.redirect_uri,
            code_verifier=Secret("z" * 64),
        )
    await harness.api.exchange_code(
        code=code, redirect_uri=harness.redirect_uri, code_verifier=verifier
    )
    with pytest.raises(InvalidGrant):
        await harness.api.exchange_code(
            code=code, redirect_uri=harness.redirect_uri, code_verifier=verifier
        )


# ------------------------------------------------------- subscription state
async def test_a_subscription_is_read_back_until_deleted(harness: Harness) -> None:
    granted = await harness.grant("ada@example.com", True)
    token = granted.tokens.access_token
    me = await harness.api.current_user(token)
    sub = await harness.api.create_subscription(
        token, new_subscription(granted, "https://app.example/hooks/g", me.organization_uri)
    )
    read = await harness.api.get_subscription(token, sub.uri)
    assert (read.uri, read.callback_url, read.events, read.user_uri, read.scope) == (
        sub.uri,
        sub.callback_url,
        sub.events,
        me.user_uri,
        "user",
    )
    assert read.is_active

    await harness.steer.disable(sub.uri)
    disabled = await harness.api.get_subscription(token, sub.uri)
    assert disabled.state == "disabled"
    assert not disabled.is_active
    # A disabled subscription is still listed (and still blocks its callback URL).
    listed = await harness.api.list_subscriptions(
        token, organization_uri=me.organization_uri, user_uri=me.user_uri
    )
    assert [(s.uri, s.state) for s in listed] == [(sub.uri, "disabled")]

    await harness.api.delete_subscription(token, sub.uri)
    with pytest.raises(ResourceNotFound):
        await harness.api.get_subscription(token, sub.uri)


# ------------------------------------------------------------ scheduled events
def summary(meetings: list[Meeting]) -> list[tuple[str, datetime | None, MeetingStatus]]:
    return [(m.event_uri, m.start_time, m.status) for m in meetings]


async def test_events_of_both_statuses_are_listed_across_pages(harness: Harness) -> None:
    granted = await harness.grant("ada@example.com", True)
    token, me = granted.tokens.access_token, granted.owner_uri
    # Booked out of order; one before the window and one at its (exclusive) end.
    third, _ = await harness.steer.book(me, T0 + 3 * DAY)
    first, _ = await harness.steer.book(me, T0 + DAY)
    second, second_invitee = await harness.steer.book(me, T0 + 2 * DAY)
    await harness.steer.book(me, T0 - DAY)
    await harness.steer.book(me, T0 + 4 * DAY)
    await harness.steer.cancel(second_invitee, "host", "Sick")

    listed = await harness.api.list_scheduled_events(
        token, user_uri=me, min_start_time=T0, max_start_time=T0 + 4 * DAY
    )
    assert summary(listed) == [
        (first, T0 + DAY, MeetingStatus.ACTIVE),
        (second, T0 + 2 * DAY, MeetingStatus.CANCELED),
        (third, T0 + 3 * DAY, MeetingStatus.ACTIVE),
    ]
    canceled = listed[1]
    assert canceled.cancellation is not None
    assert canceled.cancellation.canceler_type == "host"
    assert canceled.cancellation.reason == "Sick"
    assert canceled.cancellation.canceled_at is not None
    assert canceled.cancellation.canceled_at.tzinfo is not None
    assert listed[0].cancellation is None
    assert all(m.end_time == m.start_time + timedelta(minutes=30) for m in listed if m.start_time)
    assert all(m.name and m.location and m.location.get("type") for m in listed)

    # Without an upper bound, everything from the lower bound on.
    later = await harness.api.list_scheduled_events(token, user_uri=me, min_start_time=T0)
    assert [m.start_time for m in later] == [T0 + n * DAY for n in (1, 2, 3, 4)]


async def test_another_users_events_are_not_listed(harness: Harness) -> None:
    ada = await harness.grant("ada@example.com", True)
    bob = await harness.grant("bob@example.com", True)
    await harness.steer.book(ada.owner_uri, T0)
    assert (
        await harness.api.list_scheduled_events(
            bob.tokens.access_token, user_uri=bob.owner_uri, min_start_time=T0 - DAY
        )
        == []
    )
    with pytest.raises(PermissionDenied):
        await harness.api.list_scheduled_events(
            bob.tokens.access_token, user_uri=ada.owner_uri, min_start_time=T0 - DAY
        )


# ------------------------------------------------------------------ invitees
def only(invitees: list[Invitee]) -> Invitee:
    assert len(invitees) == 1, invitees
    return invitees[0]


async def test_a_reschedule_links_the_old_and_the_new_invitee(harness: Harness) -> None:
    granted = await harness.grant("ada@example.com", True)
    token, me = granted.tokens.access_token, granted.owner_uri
    old_event, old_uri = await harness.steer.book(me, T0)
    new_event, new_uri = await harness.steer.reschedule(old_uri, T0 + DAY)

    old = only(await harness.api.list_invitees(token, old_event))
    assert old.invitee_uri == old_uri
    assert old.event_uri == old_event
    assert old.status is MeetingStatus.CANCELED
    assert old.rescheduled
    assert old.new_invitee_uri == new_uri
    assert old.cancellation is not None
    assert old.cancellation.canceler_type == "invitee"
    assert old.email == "grace@example.org"

    new = only(await harness.api.list_invitees(token, new_event))
    assert (new.invitee_uri, new.event_uri) == (new_uri, new_event)
    assert new.status is MeetingStatus.ACTIVE
    assert new.old_invitee_uri == old_uri
    assert not new.rescheduled
    assert new.cancellation is None

    events = await harness.api.list_scheduled_events(token, user_uri=me, min_start_time=T0)
    assert summary(events) == [
        (old_event, T0, MeetingStatus.CANCELED),
        (new_event, T0 + DAY, MeetingStatus.ACTIVE),
    ]


async def test_a_group_event_lists_every_invitee_and_stays_active(harness: Harness) -> None:
    granted = await harness.grant("ada@example.com", True)
    token, me = granted.tokens.access_token, granted.owner_uri
    event, first = await harness.steer.book(me, T0, "a@example.org", seats=5)
    second = await harness.steer.add_invitee(event, "b@example.org")
    third = await harness.steer.add_invitee(event, "c@example.org")
    await harness.steer.cancel(second, "invitee", "Busy")

    invitees = await harness.api.list_invitees(token, event)
    assert [(i.invitee_uri, i.email, i.status) for i in invitees] == [
        (first, "a@example.org", MeetingStatus.ACTIVE),
        (second, "b@example.org", MeetingStatus.CANCELED),
        (third, "c@example.org", MeetingStatus.ACTIVE),
    ]
    assert invitees[1].cancellation is not None
    assert invitees[1].cancellation.reason == "Busy"
    assert not invitees[1].rescheduled
    (meeting,) = await harness.api.list_scheduled_events(token, user_uri=me, min_start_time=T0)
    assert meeting.status is MeetingStatus.ACTIVE


async def test_a_no_show_is_read_with_its_time(harness: Harness) -> None:
    granted = await harness.grant("ada@example.com", True)
    token = granted.tokens.access_token
    event, invitee_uri = await harness.steer.book(granted.owner_uri, T0)
    before = only(await harness.api.list_invitees(token, event))
    assert (before.no_show, before.no_show_changed_at) == (False, None)

    await harness.steer.mark_no_show(invitee_uri)
    after = only(await harness.api.list_invitees(token, event))
    assert after.no_show
    assert after.no_show_changed_at is not None
    assert after.no_show_changed_at.tzinfo is not None


async def test_invitees_of_an_unknown_event_are_not_found(harness: Harness) -> None:
    granted = await harness.grant("ada@example.com", True)
    event, _ = await harness.steer.book(granted.owner_uri, T0)
    gone = event.rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000"
    with pytest.raises(ResourceNotFound):
        await harness.api.list_invitees(granted.tokens.access_token, gone)
