"""AiohttpCalendlyApi against the Calendly sandbox over real HTTP: flows, errors, retries, logs."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from structlog.testing import capture_logs

from adapters.calendly import AiohttpCalendlyApi
from adapters.calendly.redaction import redact
from adapters.calendly.transport import RequestBudget
from calendly_sandbox import OAuthClient
from domain.errors import (
    AlreadyExists,
    CalendlyError,
    CalendlyUnavailable,
    InvalidGrant,
    PermissionDenied,
    PlanRequired,
    RateLimited,
    ResourceNotFound,
    TokenRejected,
)
from domain.meetings import MeetingStatus
from domain.ports import GrantedTokens, NewSubscription
from domain.secret import Secret
from tests.support.sandbox import REDIRECT_URI, SandboxDriver, query_of

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
EVENTS = ("invitee.created", "invitee.canceled")
MAX_RETRIES = 3
USERS_ME = "GET /users/me"
TOKEN = "POST /oauth/token"
CREATE = "POST /webhook_subscriptions"
LIST = "GET /webhook_subscriptions"
DELETE = "DELETE /webhook_subscriptions/{uuid}"
GET_SUB = "GET /webhook_subscriptions/{uuid}"
EVENTS_ROUTE = "GET /scheduled_events"
INVITEES_ROUTE = "GET /scheduled_events/{uuid}/invitees"
T0 = datetime(2030, 3, 5, 14, 30, tzinfo=UTC)


class RecordingSleep:
    """Stands in for `asyncio.sleep`: remembers each requested delay and returns at once.

    `monotonic` is the matching clock: it moves only by the delays slept.
    """

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.elapsed = 0.0

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.elapsed += seconds

    def monotonic(self) -> float:
        return self.elapsed


class SandboxSleep(RecordingSleep):
    """A recording sleep that also moves the sandbox's clock, so its rate windows reset."""

    def __init__(self, sandbox: SandboxDriver) -> None:
        super().__init__()
        self.sandbox = sandbox

    async def __call__(self, seconds: float) -> None:
        await super().__call__(seconds)
        await self.sandbox.control(
            "POST", "/_sandbox/clock/advance", {"seconds": seconds}, expect=200
        )


class FixedClock:
    def now(self) -> datetime:
        return NOW


@dataclasses.dataclass
class Connected:
    granted: GrantedTokens

    @property
    def access(self) -> Secret:
        return self.granted.tokens.access_token

    @property
    def refresh(self) -> Secret:
        return self.granted.tokens.refresh_token


ApiFactory = Callable[..., AiohttpCalendlyApi]


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def make_api(
    sandbox: SandboxDriver, http: aiohttp.ClientSession, sleep: RecordingSleep
) -> ApiFactory:
    def make(client: OAuthClient | None = None, **overrides: Any) -> AiohttpCalendlyApi:
        client = client or sandbox.client
        options: dict[str, Any] = {
            "client_id": client.client_id,
            "client_secret": Secret(client.client_secret),
            "auth_base_url": sandbox.url,
            "api_base_url": sandbox.url,
            "clock": FixedClock(),
            "max_read_retries": MAX_RETRIES,
            "retry_base_delay": 0.001,
            "sleep": sleep,
            "monotonic": sleep.monotonic,
            **overrides,
        }
        return AiohttpCalendlyApi(http, **options)

    return make


@pytest.fixture
def api(make_api: ApiFactory) -> AiohttpCalendlyApi:
    return make_api()


async def connect(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, email: str, **params: str
) -> Connected:
    """Consent as `email` (PKCE S256) and redeem the code through the adapter."""
    verifier = secrets.token_urlsafe(48)
    code = await sandbox.code_for(email, s256(verifier), **params)
    granted = await api.exchange_code(
        code=code, redirect_uri=REDIRECT_URI, code_verifier=Secret(verifier)
    )
    return Connected(granted)


def new_subscription(connected: Connected, n: int = 1, **changes: Any) -> NewSubscription:
    assert connected.granted.organization_uri is not None
    fields: dict[str, Any] = {
        "callback_url": f"https://app.example.com/webhooks/calendly/hook-{n}",
        "events": EVENTS,
        "organization_uri": connected.granted.organization_uri,
        "user_uri": connected.granted.owner_uri,
        "signing_key": Secret(secrets.token_urlsafe(32)),
        **changes,
    }
    return NewSubscription(**fields)


async def count_calls(sandbox: SandboxDriver, route: str) -> int:
    return len(await sandbox.calls(route))


def user_id_of(connected: Connected) -> str:
    return connected.granted.owner_uri.rsplit("/", 1)[-1]


async def book_days(
    sandbox: SandboxDriver, connected: Connected, days: range, **spec: Any
) -> list[str]:
    """Book the user once per day in `days` after T0; returns the event URIs in that order."""
    uris = []
    for day in days:
        start = (T0 + timedelta(days=day)).isoformat()
        booked = await sandbox.book(user_id_of(connected), start_time=start, **spec)
        uris.append(booked["event"]["uri"])
    return uris


# ------------------------------------------------------------------- OAuth
def test_authorization_url_has_pkce_and_scope_only_when_configured(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    url = make_api().authorization_url(
        state="st-1", code_challenge="c" * 43, redirect_uri=REDIRECT_URI
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == sandbox.url
    assert parts.path == "/oauth/authorize"
    assert query_of(url) == {
        "client_id": sandbox.client.client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "state": "st-1",
        "code_challenge": "c" * 43,
        "code_challenge_method": "S256",
    }
    scoped = make_api(scope="users:read webhooks:write").authorization_url(
        state="s", code_challenge="c" * 43, redirect_uri=REDIRECT_URI
    )
    assert parse_qs(urlsplit(scoped).query)["scope"] == ["users:read webhooks:write"]


async def test_full_connect_through_the_authorization_url(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, http: aiohttp.ClientSession
) -> None:
    verifier = secrets.token_urlsafe(48)
    url = api.authorization_url(
        state="st-42", code_challenge=s256(verifier), redirect_uri=REDIRECT_URI
    )
    async with http.get(f"{url}&sandbox_login=ada@example.com", allow_redirects=False) as resp:
        assert resp.status == 302
        callback = query_of(resp.headers["Location"])
    assert callback["state"] == "st-42"

    granted = await api.exchange_code(
        code=callback["code"], redirect_uri=REDIRECT_URI, code_verifier=Secret(verifier)
    )
    assert granted.tokens.expires_at == NOW + timedelta(seconds=7200)
    assert granted.tokens.access_token.reveal()
    assert granted.tokens.refresh_token.reveal()
    assert granted.organization_uri is not None

    account = await api.current_user(granted.tokens.access_token)
    assert account.user_uri == granted.owner_uri
    assert account.organization_uri == granted.organization_uri
    assert account.email == "ada@example.com"
    assert account.name == "Ada"


async def test_a_clock_may_be_a_plain_callable(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    later = NOW + timedelta(days=1)
    connected = await connect(make_api(clock=lambda: later), sandbox, "ada@example.com")
    assert connected.granted.tokens.expires_at == later + timedelta(seconds=7200)


async def test_a_code_works_once(api: AiohttpCalendlyApi, sandbox: SandboxDriver) -> None:
    verifier = secrets.token_urlsafe(48)
    code = await sandbox.code_for("ada@example.com", s256(verifier))
    await api.exchange_code(code=code, redirect_uri=REDIRECT_URI, code_verifier=Secret(verifier))
    with pytest.raises(InvalidGrant) as caught:
        await api.exchange_code(
            code=code, redirect_uri=REDIRECT_URI, code_verifier=Secret(verifier)
        )
    assert caught.value.status == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"] == "invalid_grant"


async def test_a_wrong_verifier_is_an_invalid_grant(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    code = await sandbox.code_for("ada@example.com", s256(secrets.token_urlsafe(48)))
    with pytest.raises(InvalidGrant):
        await api.exchange_code(
            code=code, redirect_uri=REDIRECT_URI, code_verifier=Secret(secrets.token_urlsafe(48))
        )


async def test_refresh_rotates_and_the_old_refresh_token_is_dead(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    first = await connect(api, sandbox, "ada@example.com")
    second = await api.refresh(first.refresh)
    assert second.tokens.refresh_token != first.refresh
    assert second.tokens.access_token != first.access
    assert second.owner_uri == first.granted.owner_uri
    assert second.tokens.expires_at == NOW + timedelta(seconds=7200)
    assert (await api.current_user(second.tokens.access_token)).user_uri == second.owner_uri

    with pytest.raises(InvalidGrant):
        await api.refresh(first.refresh)


async def test_wrong_client_credentials_are_not_an_invalid_grant(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    api = make_api(client_secret=Secret("not-the-secret"))
    verifier = secrets.token_urlsafe(48)
    code = await sandbox.code_for("ada@example.com", s256(verifier))
    with pytest.raises(CalendlyError) as caught:
        await api.exchange_code(
            code=code, redirect_uri=REDIRECT_URI, code_verifier=Secret(verifier)
        )
    # Our own configuration is wrong: no subclass that would make a caller blame the user's grant.
    assert type(caught.value) is CalendlyError
    assert caught.value.status == 401
    assert "invalid_client" in str(caught.value)


async def test_revoke_kills_the_access_token_and_its_refresh_token(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    connected = await connect(api, sandbox, "ada@example.com")
    await api.revoke(connected.access)
    with pytest.raises(TokenRejected) as caught:
        await api.current_user(connected.access)
    assert caught.value.status == 401
    with pytest.raises(InvalidGrant):
        await api.refresh(connected.refresh)
    # RFC 7009: revoking a dead token again is not an error.
    await api.revoke(connected.access)


async def test_a_legacy_token_response_has_no_organization(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    legacy = OAuthClient(
        client_id="legacy-client",
        client_secret=secrets.token_urlsafe(24),
        redirect_uris=[REDIRECT_URI],
        legacy_token_response=True,
    )
    body = {
        "client_id": legacy.client_id,
        "client_secret": legacy.client_secret,
        "redirect_uris": legacy.redirect_uris,
        "legacy_token_response": True,
    }
    await sandbox.control("POST", "/_sandbox/clients", body, expect=201)
    api = make_api(client=legacy)
    connected = await connect(api, dataclasses.replace(sandbox, client=legacy), "old@example.com")

    assert connected.granted.organization_uri is None
    account = await api.current_user(connected.access)
    assert account.user_uri == connected.granted.owner_uri
    assert account.organization_uri.startswith(f"{sandbox.url}/organizations/")


# ----------------------------------------------------------- subscriptions
async def test_create_list_across_pages_and_delete(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    api = make_api(page_size=2)
    ada = await connect(api, sandbox, "ada@example.com")
    assert ada.granted.organization_uri is not None
    created = [
        await api.create_subscription(ada.access, new_subscription(ada, n)) for n in (1, 2, 3)
    ]
    assert [s.callback_url for s in created] == [
        f"https://app.example.com/webhooks/calendly/hook-{n}" for n in (1, 2, 3)
    ]
    assert all(s.is_active and s.scope == "user" for s in created)
    assert all(s.user_uri == ada.granted.owner_uri and s.events == EVENTS for s in created)
    assert all(s.created_at is not None for s in created)

    await sandbox.control("DELETE", "/_sandbox/calls", expect=204)
    listed = await api.list_subscriptions(
        ada.access, organization_uri=ada.granted.organization_uri, user_uri=ada.granted.owner_uri
    )
    assert [s.uri for s in listed] == [s.uri for s in created]
    pages = await sandbox.calls(LIST)
    assert len(pages) == 2
    first, second = (query_of(call["path"]) for call in pages)
    assert first["count"] == second["count"] == "2"
    assert first["scope"] == "user"
    assert first["user"] == ada.granted.owner_uri
    assert first["organization"] == ada.granted.organization_uri
    assert "page_token" not in first
    assert second["page_token"]

    await api.delete_subscription(ada.access, created[1].uri)
    remaining = await api.list_subscriptions(
        ada.access, organization_uri=ada.granted.organization_uri, user_uri=ada.granted.owner_uri
    )
    assert [s.uri for s in remaining] == [created[0].uri, created[2].uri]
    with pytest.raises(ResourceNotFound) as caught:
        await api.delete_subscription(ada.access, created[1].uri)
    assert caught.value.status == 404


async def test_the_signing_key_is_sent_with_the_subscription(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    created = await api.create_subscription(ada.access, new_subscription(ada))
    data = await sandbox.control("GET", "/_sandbox/subscriptions", expect=200)
    (stored,) = data["subscriptions"]
    assert stored["uri"] == created.uri
    assert stored["has_signing_key"] is True


@pytest.mark.parametrize("page_size", [0, 101])
def test_a_page_size_beyond_calendlys_range_is_refused(
    make_api: ApiFactory, page_size: int
) -> None:
    with pytest.raises(ValueError, match="page_size"):
        make_api(page_size=page_size)


async def test_an_empty_list_is_one_call(api: AiohttpCalendlyApi, sandbox: SandboxDriver) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    assert ada.granted.organization_uri is not None
    listed = await api.list_subscriptions(
        ada.access, organization_uri=ada.granted.organization_uri, user_uri=ada.granted.owner_uri
    )
    assert listed == []
    assert await count_calls(sandbox, LIST) == 1


async def test_deleting_an_old_style_id_is_not_validated_locally(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    with pytest.raises(ResourceNotFound):
        await api.delete_subscription(
            ada.access, f"{sandbox.url}/webhook_subscriptions/AAAAAAAAAAAAAAAA"
        )
    (call,) = await sandbox.calls(DELETE)
    assert call["path"] == "/webhook_subscriptions/AAAAAAAAAAAAAAAA"


async def test_a_second_hook_with_the_same_url_already_exists(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await api.create_subscription(ada.access, new_subscription(ada))
    with pytest.raises(AlreadyExists) as caught:
        await api.create_subscription(ada.access, new_subscription(ada))
    assert caught.value.status == 409
    assert caught.value.body == {
        "title": "Already Exists",
        "message": "Hook with this url already exists",
    }


async def test_a_free_plan_needs_an_upgrade_but_can_still_read(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    free = await connect(api, sandbox, "free@example.com", sandbox_plan="free")
    assert free.granted.organization_uri is not None
    with pytest.raises(PlanRequired) as caught:
        await api.create_subscription(free.access, new_subscription(free))
    assert caught.value.status == 403
    listed = await api.list_subscriptions(
        free.access, organization_uri=free.granted.organization_uri, user_uri=free.granted.owner_uri
    )
    assert listed == []


async def test_another_organization_is_permission_denied(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    bob = await connect(api, sandbox, "bob@example.com")
    with pytest.raises(PermissionDenied) as caught:
        await api.create_subscription(bob.access, new_subscription(ada))
    assert not isinstance(caught.value, PlanRequired)
    assert caught.value.status == 403


async def test_an_invalid_argument_is_a_plain_calendly_error(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    with pytest.raises(CalendlyError) as caught:
        await api.create_subscription(ada.access, new_subscription(ada, callback_url="ftp://x"))
    assert type(caught.value) is CalendlyError
    assert caught.value.status == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["details"]


# ---------------------------------------------------- scheduled events
async def test_get_subscription_reads_the_state_by_its_bare_id(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    created = await api.create_subscription(ada.access, new_subscription(ada))
    uuid = created.uri.rsplit("/", 1)[-1]
    await sandbox.control("POST", f"/_sandbox/subscriptions/{uuid}/disable", expect=200)
    read = await api.get_subscription(ada.access, created.uri)
    assert read.uri == created.uri
    assert read.state == "disabled"
    assert read.created_at is not None
    (call,) = await sandbox.calls(GET_SUB)
    assert call["path"] == f"/webhook_subscriptions/{uuid}"
    await api.delete_subscription(ada.access, created.uri)
    with pytest.raises(ResourceNotFound):
        await api.get_subscription(ada.access, created.uri)


async def test_events_are_listed_across_pages_with_the_documented_query(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    api = make_api(page_size=2)
    ada = await connect(api, sandbox, "ada@example.com")
    booked = await book_days(sandbox, ada, range(5))
    listed = await api.list_scheduled_events(
        ada.access,
        user_uri=ada.granted.owner_uri,
        min_start_time=T0,
        max_start_time=T0 + timedelta(days=30),
    )
    assert [m.event_uri for m in listed] == booked
    assert [m.start_time for m in listed] == [T0 + timedelta(days=d) for d in range(5)]
    assert all(m.status is MeetingStatus.ACTIVE and m.name for m in listed)

    pages = [query_of(c["path"]) for c in await sandbox.calls(EVENTS_ROUTE)]
    assert len(pages) == 3
    assert pages[0] == {
        "user": ada.granted.owner_uri,
        "min_start_time": "2030-03-05T14:30:00.000000Z",
        "max_start_time": "2030-04-04T14:30:00.000000Z",
        "sort": "start_time:asc",
        "count": "2",
    }
    assert all(p["page_token"] for p in pages[1:])
    assert all("status" not in p for p in pages)


async def test_a_naive_lower_bound_is_taken_as_utc_and_the_upper_is_optional(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await api.list_scheduled_events(
        ada.access, user_uri=ada.granted.owner_uri, min_start_time=datetime(2030, 1, 1)
    )
    (call,) = await sandbox.calls(EVENTS_ROUTE)
    query = query_of(call["path"])
    assert query["min_start_time"] == "2030-01-01T00:00:00.000000Z"
    assert "max_start_time" not in query


async def test_invitees_are_listed_across_pages_by_the_events_bare_id(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    api = make_api(page_size=2)
    ada = await connect(api, sandbox, "ada@example.com")
    guests = [{"name": f"Guest {n}", "email": f"g{n}@example.org"} for n in range(3)]
    booked = await sandbox.book(user_id_of(ada), invitees=guests)
    event_uri = booked["event"]["uri"]
    invitees = await api.list_invitees(ada.access, event_uri)
    assert [i.invitee_uri for i in invitees] == [i["uri"] for i in booked["invitees"]]
    assert [i.email for i in invitees] == [g["email"] for g in guests]
    assert all(i.event_uri == event_uri for i in invitees)

    calls = await sandbox.calls(INVITEES_ROUTE)
    assert len(calls) == 2
    uuid = event_uri.rsplit("/", 1)[-1]
    assert all(urlsplit(c["path"]).path == f"/scheduled_events/{uuid}/invitees" for c in calls)
    first, second = (query_of(c["path"]) for c in calls)
    assert first == {"sort": "created_at:asc", "count": "2"}
    assert second["page_token"]


def event_json(uri: str | None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Odd",
        "status": "active",
        "start_time": "2030-03-05T14:30:00.000000Z",
        "end_time": "2030-03-05T15:00:00.000000Z",
        "location": {"type": "zoom"},
        **fields,
    }
    if uri is not None:
        body["uri"] = uri
    return body


async def test_odd_events_are_read_leniently_and_unusable_ones_skipped(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    base = f"{sandbox.url}/scheduled_events"
    page = {
        "collection": [
            event_json(None, name="secret-name-1"),
            event_json("", name="secret-name-2"),
            event_json(f"{base}/bad-time", start_time="next tuesday"),
            event_json(
                f"{base}/new-shape",
                status="canceled",
                # A location type from the future, times without a zone, fields we never saw.
                location={"type": "holodeck", "deck": 7},
                start_time="2030-03-06T09:00:00",
                end_time="2030-03-06T09:30:00",
                cancellation={"canceler_type": "host", "created_at": "2030-03-01T08:00:00"},
                brand_new_field={"nested": [1, 2]},
            ),
            event_json(f"{base}/plain", location=None),
        ],
        "pagination": {"count": 5, "next_page_token": None},
    }
    await sandbox.fault(EVENTS_ROUTE, status=200, body=page)
    with capture_logs() as logs:
        listed = await api.list_scheduled_events(
            ada.access, user_uri=ada.granted.owner_uri, min_start_time=T0
        )
    assert [m.event_uri for m in listed] == [f"{base}/new-shape", f"{base}/plain"]
    odd = listed[0]
    assert odd.status is MeetingStatus.CANCELED
    assert odd.location == {"type": "holodeck", "deck": 7}
    assert odd.start_time == datetime(2030, 3, 6, 9, tzinfo=UTC)
    assert odd.end_time == datetime(2030, 3, 6, 9, 30, tzinfo=UTC)
    assert odd.cancellation is not None
    assert odd.cancellation.canceled_at == datetime(2030, 3, 1, 8, tzinfo=UTC)
    assert listed[1].location is None
    skipped = [e for e in logs if e["event"] == "calendly.item_skipped"]
    assert len(skipped) == 3
    assert all(e["log_level"] == "warning" and e["path"] == "/scheduled_events" for e in skipped)
    assert "secret-name" not in repr(logs)


async def test_invitees_without_a_uri_are_skipped_and_no_shows_read(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    event_uri = f"{sandbox.url}/scheduled_events/e1"
    page = {
        "collection": [
            {"email": "nobody@example.org", "status": "active"},
            {
                "uri": f"{event_uri}/invitees/i2",
                "status": "canceled",
                "rescheduled": True,
                "new_invitee": f"{sandbox.url}/scheduled_events/e2/invitees/i3",
                "cancellation": {"canceler_type": "invitee", "reason": "Moved"},
                "no_show": {"uri": "x", "created_at": "2030-03-05T15:00:00.000000Z"},
                "payment": {"amount": 1},
            },
            # Pre-2022: a boolean instead of `status`.
            {"uri": f"{event_uri}/invitees/i4", "canceled": True},
        ],
        "pagination": {},
    }
    await sandbox.fault(INVITEES_ROUTE, status=200, body=page)
    with capture_logs() as logs:
        invitees = await api.list_invitees(ada.access, event_uri)
    moved, legacy = invitees
    assert moved.status is MeetingStatus.CANCELED
    assert moved.rescheduled
    assert moved.new_invitee_uri == f"{sandbox.url}/scheduled_events/e2/invitees/i3"
    assert moved.cancellation is not None
    assert moved.cancellation.reason == "Moved"
    assert moved.no_show
    assert moved.no_show_changed_at == datetime(2030, 3, 5, 15, tzinfo=UTC)
    assert legacy.status is MeetingStatus.CANCELED
    assert (legacy.no_show, legacy.no_show_changed_at) == (False, None)
    assert [e["event"] for e in logs] == ["calendly.item_skipped"]
    assert "nobody@example.org" not in repr(logs)


async def test_a_page_that_is_not_a_collection_is_unavailable(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(EVENTS_ROUTE, status=200, body={"resource": {}})
    with pytest.raises(CalendlyUnavailable):
        await api.list_scheduled_events(
            ada.access, user_uri=ada.granted.owner_uri, min_start_time=T0
        )


async def test_a_pagination_that_does_not_advance_is_unavailable(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    stuck = {"collection": [], "pagination": {"next_page_token": "again"}}
    await sandbox.fault(EVENTS_ROUTE, status=200, body=stuck, count=2)
    with pytest.raises(CalendlyUnavailable, match="does not advance"):
        await api.list_scheduled_events(
            ada.access, user_uri=ada.granted.owner_uri, min_start_time=T0
        )


# ----------------------------------------------------------- rate limits
async def test_a_429_on_a_read_waits_out_the_reset_and_retries(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, status=429, reset_seconds=1)
    account = await api.current_user(ada.access)
    assert account.user_uri == ada.granted.owner_uri
    assert sleep.delays == [1.0]
    assert [c["status"] for c in await sandbox.calls(USERS_ME)] == [429, 200]


async def test_a_429_beyond_the_retry_budget_is_rate_limited(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, status=429, reset_seconds=2, count=MAX_RETRIES + 1)
    with pytest.raises(RateLimited) as caught:
        await api.current_user(ada.access)
    assert caught.value.retry_after == 2
    assert sleep.delays == [2.0] * MAX_RETRIES
    assert await count_calls(sandbox, USERS_ME) == MAX_RETRIES + 1


async def test_a_reset_longer_than_we_may_wait_is_rate_limited_at_once(
    make_api: ApiFactory, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    api = make_api(max_rate_limit_wait=5)
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, status=429, reset_seconds=30)
    with pytest.raises(RateLimited) as caught:
        await api.current_user(ada.access)
    assert caught.value.retry_after == 30
    assert sleep.delays == []


async def test_a_429_on_create_is_not_retried(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(CREATE, status=429, reset_seconds=7)
    with pytest.raises(RateLimited) as caught:
        await api.create_subscription(ada.access, new_subscription(ada))
    assert caught.value.retry_after == 7
    assert sleep.delays == []
    assert await count_calls(sandbox, CREATE) == 1


async def test_a_429_at_the_token_endpoint_is_not_retried(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(TOKEN, status=429, reset_seconds=9)
    with pytest.raises(RateLimited) as caught:
        await api.refresh(ada.refresh)
    assert caught.value.retry_after == 9
    assert sleep.delays == []
    assert await count_calls(sandbox, TOKEN) == 2  # the code exchange and this one


async def test_the_real_token_rate_limit_is_rate_limited(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    await sandbox.settings(token_requests_per_minute=1)
    ada = await connect(api, sandbox, "ada@example.com")
    with pytest.raises(RateLimited) as caught:
        await api.refresh(ada.refresh)
    assert 0 < caught.value.retry_after <= 60
    # The refresh token was not spent: a later refresh still works.
    await sandbox.settings(token_requests_per_minute=8)
    await api.refresh(ada.refresh)


async def test_a_429_on_listing_events_is_waited_out_without_a_refresh(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    booked = await book_days(sandbox, ada, range(2))
    await sandbox.fault(EVENTS_ROUTE, status=429, reset_seconds=7)
    listed = await api.list_scheduled_events(
        ada.access, user_uri=ada.granted.owner_uri, min_start_time=T0
    )
    assert [m.event_uri for m in listed] == booked
    assert sleep.delays == [7.0]
    assert [c["status"] for c in await sandbox.calls(EVENTS_ROUTE)] == [429, 200]
    # The same access token throughout: a 429 is no reason to refresh.
    assert await count_calls(sandbox, TOKEN) == 1


async def test_a_lasting_429_is_rate_limited_and_never_a_token_problem(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(EVENTS_ROUTE, status=429, reset_seconds=3, count=MAX_RETRIES + 1)
    with pytest.raises(RateLimited) as caught:
        await api.list_scheduled_events(
            ada.access, user_uri=ada.granted.owner_uri, min_start_time=T0
        )
    assert not isinstance(caught.value, TokenRejected)
    assert caught.value.retry_after == 3
    assert sleep.delays == [3.0] * MAX_RETRIES
    assert await count_calls(sandbox, TOKEN) == 1


async def test_the_budget_slows_a_bulk_sync_down_before_calendly_says_429(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    clock = SandboxSleep(sandbox)
    api = make_api(page_size=1, sleep=clock, monotonic=clock.monotonic)
    ada = await connect(api, sandbox, "ada@example.com")
    booked = await book_days(sandbox, ada, range(5))
    await sandbox.settings(rate_limit_paid=3, rate_limit_window=60)

    listed = await api.list_scheduled_events(
        ada.access, user_uri=ada.granted.owner_uri, min_start_time=T0
    )
    assert [m.event_uri for m in listed] == booked
    calls = await sandbox.calls(EVENTS_ROUTE)
    assert [c["status"] for c in calls] == [200] * 5
    assert not [c for c in await sandbox.calls() if c["status"] == 429]
    # Three calls spent the window; the fourth waited for its reset instead of a 429.
    assert clock.delays == [60.0]


async def test_a_spent_budget_beyond_the_longest_wait_is_rate_limited_without_calling(
    make_api: ApiFactory, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    api = make_api(max_rate_limit_wait=5)
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.settings(rate_limit_paid=1)
    await api.current_user(ada.access)
    with pytest.raises(RateLimited) as caught:
        await api.list_scheduled_events(
            ada.access, user_uri=ada.granted.owner_uri, min_start_time=T0
        )
    assert 5 < caught.value.retry_after <= 60
    assert await count_calls(sandbox, EVENTS_ROUTE) == 0
    assert sleep.delays == []
    # Another token (another user) has its own budget.
    bob = await connect(api, sandbox, "bob@example.com")
    await api.current_user(bob.access)


async def test_once_the_window_has_reset_the_budget_lets_calls_through(
    make_api: ApiFactory, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    api = make_api(max_rate_limit_wait=5)
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.settings(rate_limit_paid=1)
    await api.current_user(ada.access)
    # Time passes (for us and for the sandbox) beyond the announced reset.
    await sandbox.control("POST", "/_sandbox/clock/advance", {"seconds": 61}, expect=200)
    sleep.elapsed += 61
    await api.current_user(ada.access)
    assert sleep.delays == []
    assert [c["status"] for c in await sandbox.calls(USERS_ME)] == [200, 200]


def test_the_budget_counts_calls_down_and_waits_when_none_is_left() -> None:
    now = [0.0]
    budget = RequestBudget(lambda: now[0])
    budget.observe(b"k", remaining=2, reset_in=60)
    assert [budget.take(b"k") for _ in range(3)] == [0.0, 0.0, 60.0]
    now[0] = 45.0
    assert budget.take(b"k") == 15.0
    now[0] = 60.0
    assert budget.take(b"k") == 0.0  # reset: forgotten, the next answer says what is left
    assert len(budget) == 0
    assert budget.take(b"unknown") == 0.0


def test_the_budget_forgets_reset_windows_and_stays_bounded() -> None:
    now = [0.0]
    budget = RequestBudget(lambda: now[0], max_entries=3)
    budget.observe(b"short", remaining=0, reset_in=1)
    now[0] = 2.0
    budget.observe(b"a", remaining=0, reset_in=60)
    assert len(budget) == 1  # "short" had reset
    for key in (b"b", b"c", b"d"):
        budget.observe(key, remaining=0, reset_in=60)
    assert len(budget) == 3
    assert budget.take(b"a") == 0.0  # the oldest went first
    assert budget.take(b"d") == 60.0


async def test_a_server_error_burst_on_a_listing_is_retried(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    (event_uri,) = await book_days(sandbox, ada, range(1))
    await sandbox.fault(EVENTS_ROUTE, status=503, count=2)
    await sandbox.fault(INVITEES_ROUTE, status=500, count=MAX_RETRIES)
    listed = await api.list_scheduled_events(
        ada.access, user_uri=ada.granted.owner_uri, min_start_time=T0
    )
    assert [m.event_uri for m in listed] == [event_uri]
    assert len(await api.list_invitees(ada.access, event_uri)) == 1
    assert [c["status"] for c in await sandbox.calls(EVENTS_ROUTE)] == [503, 503, 200]
    assert [c["status"] for c in await sandbox.calls(INVITEES_ROUTE)] == [500] * 3 + [200]
    assert len(sleep.delays) == 2 + MAX_RETRIES


async def test_a_listing_is_retried_after_reset_connections(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    (event_uri,) = await book_days(sandbox, ada, range(1))
    # Two resets: aiohttp resends an idempotent request once on its own (see above).
    await sandbox.fault(INVITEES_ROUTE, reset_connection=True, count=2)
    invitees = await api.list_invitees(ada.access, event_uri)
    assert [i.event_uri for i in invitees] == [event_uri]
    assert 1 <= len(sleep.delays) <= 2
    assert [c["status"] for c in await sandbox.calls(INVITEES_ROUTE)][-1] == 200


# -------------------------------------------------- 5xx, resets, timeouts
async def test_a_read_is_retried_through_two_server_errors(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, status=500, count=2)
    with capture_logs() as logs:
        account = await api.current_user(ada.access)
    assert account.email == "ada@example.com"
    assert [c["status"] for c in await sandbox.calls(USERS_ME)] == [500, 500, 200]
    assert len(sleep.delays) == 2
    # Exponential with jitter: each wait within [half, all] of base * 2**n.
    assert 0.0005 <= sleep.delays[0] <= 0.001
    assert 0.001 <= sleep.delays[1] <= 0.002
    retries = [e for e in logs if e["event"] == "calendly.error_response"]
    assert [e["status"] for e in retries] == [500, 500]
    assert all(e["log_level"] == "warning" and e["path"] == "/users/me" for e in retries)
    assert retries[0]["body"]["title"] == "Internal Server Error"


async def test_server_errors_beyond_the_budget_are_unavailable(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, status=503, count=MAX_RETRIES + 1)
    with pytest.raises(CalendlyUnavailable) as caught:
        await api.current_user(ada.access)
    assert caught.value.status == 503
    assert len(sleep.delays) == MAX_RETRIES


async def test_a_token_request_is_never_retried_after_a_server_error(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    verifier = secrets.token_urlsafe(48)
    code = await sandbox.code_for("ada@example.com", s256(verifier))
    await sandbox.fault(TOKEN, status=500, count=5)
    with pytest.raises(CalendlyUnavailable) as caught:
        await api.exchange_code(
            code=code, redirect_uri=REDIRECT_URI, code_verifier=Secret(verifier)
        )
    assert caught.value.status == 500
    assert await count_calls(sandbox, TOKEN) == 1
    assert sleep.delays == []


async def test_a_token_request_is_never_retried_after_a_reset_connection(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(TOKEN, reset_connection=True)
    with pytest.raises(CalendlyUnavailable) as caught:
        await api.refresh(ada.refresh)
    assert caught.value.status == 0
    assert isinstance(caught.value.__cause__, aiohttp.ClientError | OSError)
    assert await count_calls(sandbox, TOKEN) == 2  # the code exchange and this one
    assert sleep.delays == []


async def test_a_read_is_retried_after_a_reset_connection(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    # aiohttp itself resends an idempotent request once after a dropped connection (RFC 9112
    # 9.3.1.1), so two resets are needed before the adapter's own retry has to step in.
    await sandbox.fault(USERS_ME, reset_connection=True, count=2)
    account = await api.current_user(ada.access)
    assert account.user_uri == ada.granted.owner_uri
    assert 1 <= len(sleep.delays) <= 2
    assert [c["status"] for c in await sandbox.calls(USERS_ME)][-1] == 200


async def test_connections_reset_beyond_the_budget_are_unavailable(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, reset_connection=True, count=100)
    with pytest.raises(CalendlyUnavailable) as caught:
        await api.current_user(ada.access)
    assert caught.value.status == 0
    assert len(sleep.delays) == MAX_RETRIES


async def test_a_create_is_not_retried_after_a_reset_connection(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(CREATE, reset_connection=True)
    with pytest.raises(CalendlyUnavailable):
        await api.create_subscription(ada.access, new_subscription(ada))
    assert await count_calls(sandbox, CREATE) == 1
    assert sleep.delays == []


async def test_a_delete_is_retried_after_a_server_error(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    created = await api.create_subscription(ada.access, new_subscription(ada))
    await sandbox.fault(DELETE, status=502)
    await api.delete_subscription(ada.access, created.uri)
    assert [c["status"] for c in await sandbox.calls(DELETE)] == [502, 204]
    assert len(sleep.delays) == 1


async def test_a_read_that_times_out_is_retried(
    make_api: ApiFactory, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    api = make_api(timeout=aiohttp.ClientTimeout(total=0.2))
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, latency_ms=600)
    account = await api.current_user(ada.access)
    assert account.email == "ada@example.com"
    assert len(sleep.delays) == 1


async def test_an_unreachable_calendly_is_unavailable(
    make_api: ApiFactory, sleep: RecordingSleep
) -> None:
    # Port 9 (discard) on loopback: nothing listens there in a test environment.
    api = make_api(api_base_url="http://127.0.0.1:9")
    with pytest.raises(CalendlyUnavailable) as caught:
        await api.current_user(Secret("whatever"))
    assert caught.value.status == 0
    assert len(sleep.delays) == MAX_RETRIES


async def test_a_2xx_that_cannot_be_read_is_unavailable(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, status=200, body={"resource": {"uri": "x"}})
    with pytest.raises(CalendlyUnavailable) as caught:
        await api.current_user(ada.access)
    assert caught.value.status == 200


# ---------------------------------------------------------- secrets in logs
async def test_no_secret_reaches_a_log_line_or_an_exception(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    api = make_api(max_read_retries=1)
    ada = await connect(api, sandbox, "ada@example.com")
    signing_key = Secret(f"canary-signing-{secrets.token_hex(8)}")
    canaries = [
        ada.access.reveal(),
        ada.refresh.reveal(),
        signing_key.reveal(),
        sandbox.client.client_secret,
    ]
    # Calendly echoing credentials back: any under a telling key, and what the call itself sent
    # (which the adapter knows, so it can find it) inside free text.
    read_echo = {
        "title": "Internal Server Error",
        "message": f"token {ada.access.reveal()} is odd",
        "refresh_token": ada.refresh.reveal(),
        "details": [{"parameter": "x", "signing_key": signing_key.reveal()}],
    }
    echo = {
        "title": "Invalid Argument",
        "message": f"token {ada.access.reveal()} and key {signing_key.reveal()} are odd",
        "access_token": ada.access.reveal(),
        "details": [{"parameter": "signing_key", "signing_key": signing_key.reveal()}],
    }
    oauth_echo = {
        "error": "invalid_grant",
        "error_description": f"{ada.refresh.reveal()} / {sandbox.client.client_secret}",
        "refresh_token": ada.refresh.reveal(),
    }
    token_200 = {"access_token": ada.access.reveal(), "refresh_token": "r", "expires_in": "soon"}
    errors: list[BaseException] = []
    with capture_logs() as logs:
        await sandbox.fault(CREATE, status=400, body=echo)
        with pytest.raises(CalendlyError) as create_error:
            await api.create_subscription(
                ada.access, new_subscription(ada, signing_key=signing_key)
            )
        errors.append(create_error.value)

        await sandbox.fault(USERS_ME, status=500, body=read_echo, count=2)
        with pytest.raises(CalendlyUnavailable) as read_error:
            await api.current_user(ada.access)
        errors.append(read_error.value)

        await sandbox.fault(TOKEN, status=400, body=oauth_echo)
        with pytest.raises(InvalidGrant) as grant_error:
            await api.refresh(ada.refresh)
        errors.append(grant_error.value)

        await sandbox.fault(TOKEN, status=200, body=token_200)
        with pytest.raises(CalendlyUnavailable) as parse_error:
            await api.refresh(ada.refresh)
        errors.append(parse_error.value)

        await sandbox.fault(USERS_ME, status=200, body={"resource": read_echo})
        with pytest.raises(CalendlyUnavailable) as api_parse_error:
            await api.current_user(ada.access)
        errors.append(api_parse_error.value)

    assert [e["event"] for e in logs] == [
        "calendly.error_response",  # create, 400
        "calendly.error_response",  # read, 500, retried
        "calendly.error_response",  # read, 500 again, final
        "calendly.error_response",  # token, invalid_grant
        "calendly.unparsable_response",  # token, 200 that cannot be read
        "calendly.unparsable_response",  # read, 200 that cannot be read
    ]
    assert all(e["log_level"] == "warning" for e in logs)
    everything = repr(logs) + "".join(
        f"{e}{e!r}{e.args!r}{getattr(e, 'body', None)!r}" + "".join(traceback.format_exception(e))
        for e in errors
    )
    for canary in canaries:
        assert canary not in everything
    assert grant_error.value.body == {
        "error": "invalid_grant",
        "error_description": "********** / **********",
        "refresh_token": "**********",
    }


def test_redact_replaces_credential_keys_at_any_depth() -> None:
    body = {
        "title": "x",
        "Access_Token": "a",
        "details": [{"parameter": "code", "code": "c", "nested": {"client_secret": "s"}}],
    }
    assert redact(body) == {
        "title": "x",
        "Access_Token": "**********",
        "details": [
            {"parameter": "code", "code": "**********", "nested": {"client_secret": "**********"}}
        ],
    }
