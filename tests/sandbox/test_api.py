"""The sandbox's REST API over real HTTP: users, subscriptions, events, rate limits and faults."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.support.sandbox import SandboxDriver

ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
INVALID_TOKEN = {"title": "Unauthenticated", "message": "The access token is invalid"}
NOT_FOUND = {
    "title": "Resource Not Found",
    "message": "The server could not find the requested resource.",
}
SERVER_ERROR = {
    "title": "Internal Server Error",
    "message": "The server encountered an unexpected condition that prevented it from fulfilling"
    " the request.",
}
INVALID_ARGUMENT = "Invalid Argument"
INVALID_PARAMETERS = "The supplied parameters are invalid."
HOOK_EXISTS = {"title": "Already Exists", "message": "Hook with this url already exists"}
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
START = "2030-03-05T14:30:00.000000Z"

USER_FIELDS = {
    "uri",
    "name",
    "slug",
    "email",
    "scheduling_url",
    "timezone",
    "avatar_url",
    "locale",
    "time_notation",
    "resource_type",
    "created_at",
    "updated_at",
    "current_organization",
}
SUBSCRIPTION_FIELDS = {
    "uri",
    "callback_url",
    "created_at",
    "updated_at",
    "retry_started_at",
    "state",
    "events",
    "scope",
    "organization",
    "user",
    "group",
    "creator",
}
EVENT_FIELDS = {
    "uri",
    "name",
    "status",
    "start_time",
    "end_time",
    "event_type",
    "location",
    "invitees_counter",
    "created_at",
    "updated_at",
    "event_memberships",
    "event_guests",
    "calendar_event",
    "meeting_notes_plain",
    "meeting_notes_html",
}
INVITEE_FIELDS = {
    "uri",
    "email",
    "name",
    "first_name",
    "last_name",
    "status",
    "timezone",
    "event",
    "created_at",
    "updated_at",
    "questions_and_answers",
    "tracking",
    "text_reminder_number",
    "rescheduled",
    "old_invitee",
    "new_invitee",
    "cancel_url",
    "reschedule_url",
    "routing_form_submission",
    "payment",
    "no_show",
    "reconfirmation",
    "scheduling_method",
    "invitee_scheduled_by",
}
TRACKING_FIELDS = {
    "utm_campaign",
    "utm_source",
    "utm_medium",
    "utm_content",
    "utm_term",
    "salesforce_uuid",
}


@dataclass
class Account:
    """A connected Calendly user as the API sees them."""

    token: str
    user: str
    organization: str

    @property
    def id(self) -> str:
        return uuid_of(self.user)

    @property
    def org_id(self) -> str:
        return uuid_of(self.organization)


def uuid_of(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


async def connect(sandbox: SandboxDriver, email: str, **params: str) -> Account:
    tokens = await sandbox.connect(email, **params)
    assert tokens.organization is not None
    return Account(tokens.access_token, tokens.owner, tokens.organization)


async def member(sandbox: SandboxDriver, owner: Account, email: str, role: str = "user") -> Account:
    """A second user in `owner`'s organization, connected."""
    await sandbox.create_user(
        email.split("@")[0].title(), email, organization=owner.org_id, role=role
    )
    return await connect(sandbox, email)


def hook_body(account: Account, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": url,
        "events": ["invitee.created", "invitee.canceled"],
        "organization": account.organization,
        "scope": "user",
        "user": account.user,
        **extra,
    }


async def create_hook(
    sandbox: SandboxDriver, account: Account, url: str, **extra: Any
) -> dict[str, Any]:
    status, body, _ = await sandbox.api(
        "POST", "/webhook_subscriptions", account.token, json=hook_body(account, url, **extra)
    )
    assert status == 201, body
    resource: dict[str, Any] = body["resource"]
    return resource


def user_hooks_query(account: Account, **extra: str) -> dict[str, str]:
    return {"organization": account.organization, "scope": "user", "user": account.user, **extra}


async def collect_pages(
    sandbox: SandboxDriver, account: Account, path: str, params: dict[str, str]
) -> list[dict[str, Any]]:
    """Follow `next_page_token` until it is null, collecting every item."""
    items: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(50):
        query = dict(params) if token is None else {**params, "page_token": token}
        status, body, _ = await sandbox.api("GET", path, account.token, params=query)
        assert status == 200, body
        items.extend(body["collection"])
        token = body["pagination"]["next_page_token"]
        if token is None:
            return items
    raise AssertionError("pagination never ended")


async def book(sandbox: SandboxDriver, account: Account, **spec: Any) -> dict[str, Any]:
    """Book a meeting with `account` as host; returns the control API's answer."""
    return await sandbox.book(account.id, **spec)


def invalid_parameters(body: Any) -> list[str]:
    """The parameters a 400 names, after checking the envelope around them."""
    assert body["title"] == INVALID_ARGUMENT
    assert body["message"] == INVALID_PARAMETERS
    for detail in body["details"]:
        assert set(detail) == {"parameter", "message"}
        assert isinstance(detail["message"], str)
        assert detail["message"]
    return [d["parameter"] for d in body["details"]]


# ------------------------------------------------------------------ users
async def test_users_me_returns_every_documented_field_wrapped_in_resource(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com", sandbox_name="Ada Host")
    status, body, _ = await sandbox.api("GET", "/users/me", ada.token)
    assert status == 200
    assert set(body) == {"resource"}
    me = body["resource"]
    assert set(me) == USER_FIELDS
    assert me["uri"] == ada.user
    assert me["name"] == "Ada Host"
    assert me["email"] == "ada@example.com"
    assert me["slug"] == "ada-host"
    assert me["resource_type"] == "User"
    assert me["current_organization"] == ada.organization
    assert me["current_organization"].startswith(f"{sandbox.url}/organizations/")
    assert me["avatar_url"] is None
    assert isinstance(me["scheduling_url"], str)
    assert me["scheduling_url"]
    assert ISO_TIME.match(me["created_at"])
    assert ISO_TIME.match(me["updated_at"])


async def test_get_user_by_uuid_returns_self(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    status, body, _ = await sandbox.api("GET", f"/users/{ada.id}", ada.token)
    assert status == 200
    assert body["resource"] == await sandbox.me(ada.token)


async def test_get_user_in_same_organization_is_allowed(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    bob = await member(sandbox, ada, "bob@example.com")
    status, body, _ = await sandbox.api("GET", f"/users/{bob.id}", ada.token)
    assert status == 200
    assert body["resource"]["uri"] == bob.user
    assert body["resource"]["current_organization"] == ada.organization


async def test_get_user_of_another_organization_is_forbidden(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    eve = await connect(sandbox, "eve@example.net")
    assert eve.organization != ada.organization
    status, body, _ = await sandbox.api("GET", f"/users/{eve.id}", ada.token)
    assert status == 403
    assert body["title"] == "Permission Denied"
    assert body["message"].startswith("You do not have permission")


async def test_get_unknown_user_is_not_found_in_the_api_envelope(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    status, body, _ = await sandbox.api(
        "GET", "/users/00000000-0000-4000-8000-000000000000", ada.token
    )
    assert status == 404
    assert body == NOT_FOUND


# ---------------------------------------------------------------- bearer
async def test_missing_authorization_header_is_unauthenticated(sandbox: SandboxDriver) -> None:
    status, body, headers = await sandbox.api("GET", "/users/me", None)
    assert status == 401
    assert body == INVALID_TOKEN
    assert all(name in headers for name in RATE_HEADERS)


async def test_garbage_bearer_token_is_unauthenticated(sandbox: SandboxDriver) -> None:
    status, body, _ = await sandbox.api("GET", "/users/me", "not-a-real-token")
    assert status == 401
    assert body == INVALID_TOKEN


async def test_non_bearer_scheme_is_unauthenticated(
    sandbox: SandboxDriver, http: aiohttp.ClientSession
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    headers = {"Authorization": f"Token {ada.token}"}
    async with http.get(f"{sandbox.url}/users/me", headers=headers) as response:
        assert response.status == 401
        assert await response.json() == INVALID_TOKEN


async def test_expired_access_token_is_unauthenticated(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    assert (await sandbox.me(ada.token))["uri"] == ada.user
    await sandbox.control("POST", "/_sandbox/clock/advance", {"seconds": 7201}, expect=200)
    status, body, _ = await sandbox.api("GET", "/users/me", ada.token)
    assert status == 401
    assert body == INVALID_TOKEN


async def test_token_expired_through_control_api_is_unauthenticated(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    result = await sandbox.control(
        "POST", f"/_sandbox/users/{ada.id}/expire_tokens", None, expect=200
    )
    assert result == {"expired": 1}
    status, body, _ = await sandbox.api("GET", "/users/me", ada.token)
    assert (status, body) == (401, INVALID_TOKEN)


# ---------------------------------------------------- webhook subscriptions
async def test_create_subscription_returns_201_with_the_documented_shape(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    key = "my-very-own-signing-key-0123456789"
    status, body, _ = await sandbox.api(
        "POST",
        "/webhook_subscriptions",
        ada.token,
        json=hook_body(ada, "https://app.example.com/webhooks/calendly", signing_key=key),
    )
    assert status == 201
    assert set(body) == {"resource"}
    sub = body["resource"]
    assert set(sub) == SUBSCRIPTION_FIELDS
    assert sub["uri"].startswith(f"{sandbox.url}/webhook_subscriptions/")
    assert sub["callback_url"] == "https://app.example.com/webhooks/calendly"
    assert ISO_TIME.match(sub["created_at"])
    assert ISO_TIME.match(sub["updated_at"])
    assert sub["retry_started_at"] is None
    assert sub["state"] == "active"
    assert sub["events"] == ["invitee.created", "invitee.canceled"]
    assert sub["scope"] == "user"
    assert sub["organization"] == ada.organization
    assert sub["user"] == ada.user
    assert sub["group"] is None
    assert sub["creator"] == ada.user
    assert key not in json.dumps(body)


async def test_signing_key_is_never_echoed_when_reading_subscriptions(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    key = "another-secret-signing-key-abcdef"
    sub = await create_hook(sandbox, ada, "https://app.example.com/hook", signing_key=key)
    _, single, _ = await sandbox.api(
        "GET", f"/webhook_subscriptions/{uuid_of(sub['uri'])}", ada.token
    )
    _, listing, _ = await sandbox.api(
        "GET", "/webhook_subscriptions", ada.token, params=user_hooks_query(ada)
    )
    assert single["resource"]["uri"] == sub["uri"]
    assert [s["uri"] for s in listing["collection"]] == [sub["uri"]]
    assert key not in json.dumps(single)
    assert key not in json.dumps(listing)


async def test_admin_can_create_an_organization_scoped_subscription(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    sub = await create_hook(
        sandbox, ada, "https://app.example.com/org-hook", scope="organization", user=None
    )
    assert sub["scope"] == "organization"
    assert sub["user"] is None
    assert sub["organization"] == ada.organization
    assert sub["creator"] == ada.user


@pytest.mark.parametrize("missing", ["url", "events", "organization", "scope"])
async def test_create_subscription_without_a_required_parameter_is_invalid(
    sandbox: SandboxDriver, missing: str
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    payload = hook_body(ada, "https://app.example.com/hook")
    del payload[missing]
    status, body, _ = await sandbox.api("POST", "/webhook_subscriptions", ada.token, json=payload)
    assert status == 400
    assert invalid_parameters(body) == [missing]


async def test_create_user_scoped_subscription_without_user_is_invalid(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    payload = hook_body(ada, "https://app.example.com/hook")
    del payload["user"]
    status, body, _ = await sandbox.api("POST", "/webhook_subscriptions", ada.token, json=payload)
    assert status == 400
    assert invalid_parameters(body) == ["user"]


async def test_create_subscription_with_invalid_json_is_a_400(
    sandbox: SandboxDriver, http: aiohttp.ClientSession
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    headers = {"Authorization": f"Bearer {ada.token}", "Content-Type": "application/json"}
    async with http.post(
        f"{sandbox.url}/webhook_subscriptions", data=b'{"url": ', headers=headers
    ) as response:
        assert response.status == 400
        body = await response.json()
    assert body["title"] == INVALID_ARGUMENT
    assert isinstance(body["message"], str)
    status, listing, _ = await sandbox.api(
        "GET", "/webhook_subscriptions", ada.token, params=user_hooks_query(ada)
    )
    assert status == 200
    assert listing["collection"] == []


async def test_duplicate_callback_url_for_the_same_user_conflicts(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    url = "https://app.example.com/webhooks/calendly"
    await create_hook(sandbox, ada, url)
    status, body, _ = await sandbox.api(
        "POST", "/webhook_subscriptions", ada.token, json=hook_body(ada, url)
    )
    assert status == 409
    assert body == HOOK_EXISTS


async def test_default_uniqueness_lets_users_of_different_organizations_share_a_url(
    sandbox: SandboxDriver,
) -> None:
    settings = await sandbox.control("GET", "/_sandbox/settings", expect=200)
    assert settings["hook_uniqueness"] == "user"
    ada = await connect(sandbox, "ada@example.com")
    eve = await connect(sandbox, "eve@example.net")
    url = "https://app.example.com/webhooks/calendly"
    first = await create_hook(sandbox, ada, url)
    second = await create_hook(sandbox, eve, url)
    assert first["uri"] != second["uri"]
    assert second["organization"] == eve.organization


async def test_user_uniqueness_lets_two_users_of_one_organization_share_a_url(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    bob = await member(sandbox, ada, "bob@example.com")
    url = "https://app.example.com/webhooks/calendly"
    await create_hook(sandbox, ada, url)
    second = await create_hook(sandbox, bob, url)
    assert second["user"] == bob.user


async def test_organization_uniqueness_conflicts_within_an_organization_only(
    sandbox: SandboxDriver,
) -> None:
    await sandbox.settings(hook_uniqueness="organization")
    ada = await connect(sandbox, "ada@example.com")
    bob = await member(sandbox, ada, "bob@example.com")
    eve = await connect(sandbox, "eve@example.net")
    url = "https://app.example.com/webhooks/calendly"
    await create_hook(sandbox, ada, url)
    status, body, _ = await sandbox.api(
        "POST", "/webhook_subscriptions", bob.token, json=hook_body(bob, url)
    )
    assert (status, body) == (409, HOOK_EXISTS)
    other_org = await create_hook(sandbox, eve, url)
    assert other_org["organization"] == eve.organization


async def test_global_uniqueness_conflicts_across_organizations(sandbox: SandboxDriver) -> None:
    await sandbox.settings(hook_uniqueness="global")
    ada = await connect(sandbox, "ada@example.com")
    eve = await connect(sandbox, "eve@example.net")
    url = "https://app.example.com/webhooks/calendly"
    await create_hook(sandbox, ada, url)
    status, body, _ = await sandbox.api(
        "POST", "/webhook_subscriptions", eve.token, json=hook_body(eve, url)
    )
    assert (status, body) == (409, HOOK_EXISTS)


async def test_deleting_a_subscription_frees_its_url(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    url = "https://app.example.com/webhooks/calendly"
    first = await create_hook(sandbox, ada, url)
    status, _, _ = await sandbox.api(
        "DELETE", f"/webhook_subscriptions/{uuid_of(first['uri'])}", ada.token
    )
    assert status == 204
    second = await create_hook(sandbox, ada, url)
    assert second["uri"] != first["uri"]


async def test_free_plan_cannot_create_a_subscription(sandbox: SandboxDriver) -> None:
    fred = await connect(sandbox, "fred@example.com", sandbox_plan="free")
    status, body, _ = await sandbox.api(
        "POST",
        "/webhook_subscriptions",
        fred.token,
        json=hook_body(fred, "https://app.example.com/hook"),
    )
    assert status == 403
    assert body["title"] == "Permission Denied"
    assert body["message"].startswith("Please upgrade your Calendly account")


async def test_free_plan_can_still_read(sandbox: SandboxDriver) -> None:
    fred = await connect(sandbox, "fred@example.com", sandbox_plan="free")
    me = await sandbox.me(fred.token)
    assert me["uri"] == fred.user
    status, body, _ = await sandbox.api(
        "GET", "/webhook_subscriptions", fred.token, params=user_hooks_query(fred)
    )
    assert status == 200
    assert body["collection"] == []
    status, body, _ = await sandbox.api(
        "GET", "/scheduled_events", fred.token, params={"user": fred.user}
    )
    assert status == 200
    assert body["collection"] == []


async def test_non_admin_cannot_subscribe_for_another_user(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    bob = await member(sandbox, ada, "bob@example.com")
    payload = hook_body(bob, "https://app.example.com/hook", user=ada.user)
    status, body, _ = await sandbox.api("POST", "/webhook_subscriptions", bob.token, json=payload)
    assert status == 403
    assert body["title"] == "Permission Denied"
    assert body["message"].startswith("You do not have permission")


async def test_non_admin_cannot_create_an_organization_scoped_subscription(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    bob = await member(sandbox, ada, "bob@example.com")
    payload = hook_body(bob, "https://app.example.com/hook", scope="organization", user=None)
    status, body, _ = await sandbox.api("POST", "/webhook_subscriptions", bob.token, json=payload)
    assert status == 403
    assert body["message"].startswith("You do not have permission")


async def test_admin_may_subscribe_for_a_member_of_the_organization(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    bob = await member(sandbox, ada, "bob@example.com")
    sub = await create_hook(sandbox, ada, "https://app.example.com/hook", user=bob.user)
    assert sub["user"] == bob.user
    assert sub["creator"] == ada.user


async def test_subscribing_in_a_foreign_organization_is_forbidden(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    eve = await connect(sandbox, "eve@example.net")
    payload = hook_body(ada, "https://app.example.com/hook", organization=eve.organization)
    status, body, _ = await sandbox.api("POST", "/webhook_subscriptions", ada.token, json=payload)
    assert status == 403
    assert body["title"] == "Permission Denied"


async def test_list_subscriptions_requires_organization_and_scope(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    status, body, _ = await sandbox.api("GET", "/webhook_subscriptions", ada.token)
    assert status == 400
    assert sorted(invalid_parameters(body)) == ["organization", "scope"]


async def test_list_user_scoped_subscriptions_requires_user(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    status, body, _ = await sandbox.api(
        "GET",
        "/webhook_subscriptions",
        ada.token,
        params={"organization": ada.organization, "scope": "user"},
    )
    assert status == 400
    assert invalid_parameters(body) == ["user"]


async def test_list_subscriptions_pages_through_every_subscription_exactly_once(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    created = []
    for n in range(5):
        created.append(await create_hook(sandbox, ada, f"https://app.example.com/hook/{n}"))
        await sandbox.control("POST", "/_sandbox/clock/advance", {"seconds": 1}, expect=200)
    items = await collect_pages(
        sandbox, ada, "/webhook_subscriptions", user_hooks_query(ada, count="2")
    )
    assert [s["uri"] for s in items] == [s["uri"] for s in created]


async def test_subscription_pagination_object_links_the_pages(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    for n in range(5):
        await create_hook(sandbox, ada, f"https://app.example.com/hook/{n}")
    status, first, _ = await sandbox.api(
        "GET", "/webhook_subscriptions", ada.token, params=user_hooks_query(ada, count="2")
    )
    assert status == 200
    pagination = first["pagination"]
    assert set(pagination) == {
        "count",
        "next_page",
        "previous_page",
        "next_page_token",
        "previous_page_token",
    }
    assert pagination["count"] == 2
    assert pagination["previous_page"] is None
    assert pagination["previous_page_token"] is None
    assert pagination["next_page"].startswith(f"{sandbox.url}/webhook_subscriptions?")
    assert f"page_token={pagination['next_page_token']}" in pagination["next_page"]

    status, second, _ = await sandbox.api("GET", pagination["next_page"], ada.token)
    assert status == 200
    assert len(second["collection"]) == 2
    assert second["pagination"]["previous_page_token"] is not None
    assert second["pagination"]["previous_page"].startswith(f"{sandbox.url}/")
    first_uris = {s["uri"] for s in first["collection"]}
    assert first_uris.isdisjoint(s["uri"] for s in second["collection"])

    status, back, _ = await sandbox.api("GET", second["pagination"]["previous_page"], ada.token)
    assert status == 200
    assert {s["uri"] for s in back["collection"]} == first_uris

    status, third, _ = await sandbox.api("GET", second["pagination"]["next_page"], ada.token)
    assert status == 200
    assert len(third["collection"]) == 1
    assert third["pagination"]["count"] == 1
    assert third["pagination"]["next_page"] is None
    assert third["pagination"]["next_page_token"] is None


async def test_list_subscriptions_default_page_size_is_twenty(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    for n in range(21):
        await create_hook(sandbox, ada, f"https://app.example.com/hook/{n}")
    status, body, _ = await sandbox.api(
        "GET", "/webhook_subscriptions", ada.token, params=user_hooks_query(ada)
    )
    assert status == 200
    assert len(body["collection"]) == 20
    assert body["pagination"]["next_page_token"] is not None


@pytest.mark.parametrize("count", ["0", "101", "-1", "ten"])
async def test_list_subscriptions_rejects_a_count_outside_1_to_100(
    sandbox: SandboxDriver, count: str
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    status, body, _ = await sandbox.api(
        "GET", "/webhook_subscriptions", ada.token, params=user_hooks_query(ada, count=count)
    )
    assert status == 400
    assert invalid_parameters(body) == ["count"]


async def test_list_subscriptions_accepts_count_100(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    await create_hook(sandbox, ada, "https://app.example.com/hook")
    status, body, _ = await sandbox.api(
        "GET", "/webhook_subscriptions", ada.token, params=user_hooks_query(ada, count="100")
    )
    assert status == 200
    assert body["pagination"]["count"] == 1


@pytest.mark.parametrize("page_token", ["%%%not-a-token%%%", "bm9wZQ"])
async def test_list_subscriptions_rejects_a_bad_page_token(
    sandbox: SandboxDriver, page_token: str
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    status, body, _ = await sandbox.api(
        "GET",
        "/webhook_subscriptions",
        ada.token,
        params=user_hooks_query(ada, page_token=page_token),
    )
    assert status == 400
    assert invalid_parameters(body) == ["page_token"]


async def test_list_subscriptions_sorts_by_created_at_descending(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    created = []
    for n in range(3):
        created.append(await create_hook(sandbox, ada, f"https://app.example.com/hook/{n}"))
        await sandbox.control("POST", "/_sandbox/clock/advance", {"seconds": 1}, expect=200)
    status, body, _ = await sandbox.api(
        "GET",
        "/webhook_subscriptions",
        ada.token,
        params=user_hooks_query(ada, sort="created_at:desc"),
    )
    assert status == 200
    assert [s["uri"] for s in body["collection"]] == [s["uri"] for s in reversed(created)]


async def test_list_subscriptions_rejects_an_unknown_sort(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    status, body, _ = await sandbox.api(
        "GET", "/webhook_subscriptions", ada.token, params=user_hooks_query(ada, sort="url:asc")
    )
    assert status == 400
    assert invalid_parameters(body) == ["sort"]


async def test_list_subscriptions_shows_only_the_named_users_hooks(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    bob = await member(sandbox, ada, "bob@example.com")
    await create_hook(sandbox, ada, "https://app.example.com/ada")
    bobs = await create_hook(sandbox, bob, "https://app.example.com/bob")
    org_hook = await create_hook(
        sandbox, ada, "https://app.example.com/org", scope="organization", user=None
    )
    _, body, _ = await sandbox.api(
        "GET", "/webhook_subscriptions", bob.token, params=user_hooks_query(bob)
    )
    assert [s["uri"] for s in body["collection"]] == [bobs["uri"]]
    _, body, _ = await sandbox.api(
        "GET",
        "/webhook_subscriptions",
        ada.token,
        params={"organization": ada.organization, "scope": "organization"},
    )
    assert [s["uri"] for s in body["collection"]] == [org_hook["uri"]]


async def test_non_admin_cannot_list_another_users_subscriptions(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    bob = await member(sandbox, ada, "bob@example.com")
    status, body, _ = await sandbox.api(
        "GET", "/webhook_subscriptions", bob.token, params=user_hooks_query(ada)
    )
    assert status == 403
    assert body["title"] == "Permission Denied"


async def test_get_subscription_by_uuid(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    sub = await create_hook(sandbox, ada, "https://app.example.com/hook")
    status, body, _ = await sandbox.api(
        "GET", f"/webhook_subscriptions/{uuid_of(sub['uri'])}", ada.token
    )
    assert status == 200
    assert body == {"resource": sub}


async def test_get_unknown_subscription_is_not_found(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    status, body, _ = await sandbox.api("GET", "/webhook_subscriptions/nope", ada.token)
    assert (status, body) == (404, NOT_FOUND)


async def test_delete_subscription_then_it_is_gone(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    sub = await create_hook(sandbox, ada, "https://app.example.com/hook")
    path = f"/webhook_subscriptions/{uuid_of(sub['uri'])}"
    status, body, _ = await sandbox.api("DELETE", path, ada.token)
    assert status == 204
    assert body is None
    status, body, _ = await sandbox.api("GET", path, ada.token)
    assert (status, body) == (404, NOT_FOUND)
    status, body, _ = await sandbox.api("DELETE", path, ada.token)
    assert (status, body) == (404, NOT_FOUND)
    _, listing, _ = await sandbox.api(
        "GET", "/webhook_subscriptions", ada.token, params=user_hooks_query(ada)
    )
    assert listing["collection"] == []


async def test_another_organization_cannot_read_or_delete_a_subscription(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    eve = await connect(sandbox, "eve@example.net")
    sub = await create_hook(sandbox, ada, "https://app.example.com/hook")
    path = f"/webhook_subscriptions/{uuid_of(sub['uri'])}"
    assert (await sandbox.api("GET", path, eve.token))[0] == 403
    assert (await sandbox.api("DELETE", path, eve.token))[0] == 403
    assert (await sandbox.api("GET", path, ada.token))[0] == 200


# ------------------------------------------------------- scheduled events
async def test_booked_meetings_are_listed_for_their_host(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    first = await book(sandbox, ada, start_time="2030-03-05T14:30:00Z")
    second = await book(sandbox, ada, start_time="2030-03-06T09:00:00Z")
    status, body, headers = await sandbox.api(
        "GET", "/scheduled_events", ada.token, params={"user": ada.user}
    )
    assert status == 200
    assert [e["uri"] for e in body["collection"]] == [first["event"]["uri"], second["event"]["uri"]]
    assert body["pagination"]["next_page_token"] is None
    assert all(name in headers for name in RATE_HEADERS)


async def test_scheduled_event_has_the_documented_shape(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com", sandbox_name="Ada Host")
    booked = await book(
        sandbox,
        ada,
        start_time=START,
        duration_minutes=45,
        event_name="Intro Call",
        location_type="google_conference",
    )
    uuid = uuid_of(booked["event"]["uri"])
    status, body, _ = await sandbox.api("GET", f"/scheduled_events/{uuid}", ada.token)
    assert status == 200
    assert set(body) == {"resource"}
    event = body["resource"]
    assert set(event) == EVENT_FIELDS
    assert event["uri"] == f"{sandbox.url}/scheduled_events/{uuid}"
    assert event["name"] == "Intro Call"
    assert event["status"] == "active"
    assert event["start_time"] == "2030-03-05T14:30:00.000000Z"
    assert event["end_time"] == "2030-03-05T15:15:00.000000Z"
    assert event["event_type"].startswith(f"{sandbox.url}/event_types/")
    assert event["location"]["type"] == "google_conference"
    assert event["invitees_counter"] == {"total": 1, "active": 1, "limit": 1}
    assert event["event_memberships"] == [
        {"user": ada.user, "user_email": "ada@example.com", "user_name": "Ada Host"}
    ]
    assert event["event_guests"] == []
    assert ISO_TIME.match(event["created_at"])
    assert ISO_TIME.match(event["updated_at"])
    assert "cancellation" not in event


async def test_scheduled_events_of_one_event_type_share_it(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    one = await book(sandbox, ada, event_name="Intro Call")
    two = await book(sandbox, ada, event_name="Intro Call", start_time="2030-03-06T09:00:00Z")
    other = await book(sandbox, ada, event_name="Deep Dive", start_time="2030-03-07T09:00:00Z")
    assert one["event"]["event_type"] == two["event"]["event_type"]
    assert other["event"]["event_type"] != one["event"]["event_type"]


async def test_canceled_event_carries_a_cancellation(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com", sandbox_name="Ada Host")
    booked = await book(sandbox, ada)
    uuid = uuid_of(booked["event"]["uri"])
    await sandbox.control("POST", f"/_sandbox/events/{uuid}/cancel", {"reason": "Sick"}, expect=201)
    status, body, _ = await sandbox.api("GET", f"/scheduled_events/{uuid}", ada.token)
    assert status == 200
    event = body["resource"]
    assert event["status"] == "canceled"
    assert event["invitees_counter"] == {"total": 1, "active": 0, "limit": 1}
    cancellation = event["cancellation"]
    assert set(cancellation) == {"canceled_by", "reason", "canceler_type", "created_at"}
    assert cancellation["canceler_type"] == "host"
    assert cancellation["canceled_by"] == "Ada Host"
    assert cancellation["reason"] == "Sick"
    assert ISO_TIME.match(cancellation["created_at"])


async def test_event_canceled_by_its_invitee_says_so(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    booked = await book(sandbox, ada)
    invitee_uuid = uuid_of(booked["invitees"][0]["uri"])
    await sandbox.control(
        "POST",
        f"/_sandbox/invitees/{invitee_uuid}/cancel",
        {"canceler_type": "invitee", "reason": "Conflict"},
        expect=201,
    )
    path = f"/scheduled_events/{uuid_of(booked['event']['uri'])}"
    _, body, _ = await sandbox.api("GET", path, ada.token)
    assert body["resource"]["cancellation"]["canceler_type"] == "invitee"
    assert body["resource"]["cancellation"]["canceled_by"] == "Grace Guest"
    _, invitee, _ = await sandbox.api("GET", f"{path}/invitees/{invitee_uuid}", ada.token)
    assert invitee["resource"]["status"] == "canceled"
    assert invitee["resource"]["cancellation"]["canceler_type"] == "invitee"
    assert invitee["resource"]["cancellation"]["reason"] == "Conflict"


async def test_scheduled_events_filter_by_status(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    kept = await book(sandbox, ada, start_time="2030-03-05T14:30:00Z")
    dropped = await book(sandbox, ada, start_time="2030-03-06T14:30:00Z")
    await sandbox.control(
        "POST", f"/_sandbox/events/{uuid_of(dropped['event']['uri'])}/cancel", {}, expect=201
    )
    by_status = {}
    for status_filter in ("active", "canceled"):
        status, body, _ = await sandbox.api(
            "GET",
            "/scheduled_events",
            ada.token,
            params={"user": ada.user, "status": status_filter},
        )
        assert status == 200
        by_status[status_filter] = [e["uri"] for e in body["collection"]]
    assert by_status == {"active": [kept["event"]["uri"]], "canceled": [dropped["event"]["uri"]]}


async def test_scheduled_events_filter_by_start_time_window(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    uris = [
        (await book(sandbox, ada, start_time=f"2030-03-0{day}T10:00:00Z"))["event"]["uri"]
        for day in (1, 2, 3, 4)
    ]
    status, body, _ = await sandbox.api(
        "GET",
        "/scheduled_events",
        ada.token,
        params={
            "user": ada.user,
            "min_start_time": "2030-03-02T10:00:00.000000Z",
            "max_start_time": "2030-03-04T10:00:00.000000Z",
        },
    )
    assert status == 200
    # min_start_time is inclusive; max_start_time includes only meetings starting before it.
    assert [e["uri"] for e in body["collection"]] == uris[1:3]


async def test_scheduled_events_sort_by_start_time_descending(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    late = await book(sandbox, ada, start_time="2030-03-09T10:00:00Z")
    early = await book(sandbox, ada, start_time="2030-03-01T10:00:00Z")
    middle = await book(sandbox, ada, start_time="2030-03-05T10:00:00Z")
    status, body, _ = await sandbox.api(
        "GET",
        "/scheduled_events",
        ada.token,
        params={"user": ada.user, "sort": "start_time:desc"},
    )
    assert status == 200
    expected = [late["event"]["uri"], middle["event"]["uri"], early["event"]["uri"]]
    assert [e["uri"] for e in body["collection"]] == expected


async def test_scheduled_events_filter_by_invitee_email(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    await book(sandbox, ada, invitees=[{"name": "Grace Guest", "email": "grace@example.org"}])
    linus = await book(
        sandbox,
        ada,
        start_time="2030-03-06T10:00:00Z",
        invitees=[{"name": "Linus Guest", "email": "linus@example.org"}],
    )
    status, body, _ = await sandbox.api(
        "GET",
        "/scheduled_events",
        ada.token,
        params={"user": ada.user, "invitee_email": "Linus@Example.org"},
    )
    assert status == 200
    assert [e["uri"] for e in body["collection"]] == [linus["event"]["uri"]]


async def test_scheduled_events_paginate_with_count_and_page_token(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    uris = [
        (await book(sandbox, ada, start_time=f"2030-03-0{day}T10:00:00Z"))["event"]["uri"]
        for day in range(1, 6)
    ]
    items = await collect_pages(sandbox, ada, "/scheduled_events", {"user": ada.user, "count": "2"})
    assert [e["uri"] for e in items] == uris


async def test_scheduled_events_need_user_or_organization(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    status, body, _ = await sandbox.api("GET", "/scheduled_events", ada.token)
    assert status == 400
    assert sorted(invalid_parameters(body)) == ["organization", "user"]


async def test_admin_lists_the_organizations_events(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    bob = await member(sandbox, ada, "bob@example.com")
    adas = await book(sandbox, ada, start_time="2030-03-01T10:00:00Z")
    bobs = await book(sandbox, bob, start_time="2030-03-02T10:00:00Z")
    status, body, _ = await sandbox.api(
        "GET", "/scheduled_events", ada.token, params={"organization": ada.organization}
    )
    assert status == 200
    assert [e["uri"] for e in body["collection"]] == [adas["event"]["uri"], bobs["event"]["uri"]]
    status, body, _ = await sandbox.api(
        "GET", "/scheduled_events", bob.token, params={"organization": bob.organization}
    )
    assert status == 403
    assert body["title"] == "Permission Denied"


async def test_another_users_events_are_forbidden(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    eve = await connect(sandbox, "eve@example.net")
    booked = await book(sandbox, ada)
    status, body, _ = await sandbox.api(
        "GET", "/scheduled_events", eve.token, params={"user": ada.user}
    )
    assert status == 403
    assert body["message"].startswith("You do not have permission")
    event_path = f"/scheduled_events/{uuid_of(booked['event']['uri'])}"
    status, _, _ = await sandbox.api("GET", event_path, eve.token)
    assert status == 403
    status, _, _ = await sandbox.api("GET", f"{event_path}/invitees", eve.token)
    assert status == 403


async def test_a_colleague_without_admin_rights_cannot_list_your_events(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    bob = await member(sandbox, ada, "bob@example.com")
    status, _, _ = await sandbox.api(
        "GET", "/scheduled_events", bob.token, params={"user": ada.user}
    )
    assert status == 403


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("min_start_time", "yesterday"),
        ("max_start_time", "2030-13-01T00:00:00Z"),
        ("min_start_time", "2030-03-01T10:00:00"),
        ("status", "pending"),
        ("sort", "name:asc"),
    ],
)
async def test_scheduled_events_reject_bad_filters(
    sandbox: SandboxDriver, parameter: str, value: str
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    status, body, _ = await sandbox.api(
        "GET", "/scheduled_events", ada.token, params={"user": ada.user, parameter: value}
    )
    assert status == 400
    assert invalid_parameters(body) == [parameter]


async def test_get_unknown_scheduled_event_is_not_found(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    status, body, _ = await sandbox.api("GET", "/scheduled_events/AAAABBBBCCCCDDDD", ada.token)
    assert (status, body) == (404, NOT_FOUND)


async def test_invitee_has_the_documented_shape(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    booked = await book(
        sandbox,
        ada,
        invitees=[{"name": "Grace Hopper", "email": "grace@example.org"}],
        questions_and_answers=[{"question": "Topic?", "answer": "Compilers", "position": 0}],
    )
    event_uri = booked["event"]["uri"]
    invitee_uuid = uuid_of(booked["invitees"][0]["uri"])
    status, body, _ = await sandbox.api(
        "GET", f"/scheduled_events/{uuid_of(event_uri)}/invitees/{invitee_uuid}", ada.token
    )
    assert status == 200
    assert set(body) == {"resource"}
    invitee = body["resource"]
    assert set(invitee) == INVITEE_FIELDS
    assert invitee["uri"] == f"{event_uri}/invitees/{invitee_uuid}"
    assert invitee["event"] == event_uri
    assert invitee["email"] == "grace@example.org"
    assert invitee["name"] == "Grace Hopper"
    assert invitee["first_name"] == "Grace"
    assert invitee["last_name"] == "Hopper"
    assert invitee["status"] == "active"
    assert invitee["questions_and_answers"] == [
        {"question": "Topic?", "answer": "Compilers", "position": 0}
    ]
    assert set(invitee["tracking"]) == TRACKING_FIELDS
    assert invitee["rescheduled"] is False
    assert invitee["old_invitee"] is None
    assert invitee["new_invitee"] is None
    assert invitee["no_show"] is None
    assert isinstance(invitee["cancel_url"], str)
    assert invitee["cancel_url"]
    assert isinstance(invitee["reschedule_url"], str)
    assert invitee["reschedule_url"]
    assert ISO_TIME.match(invitee["created_at"])
    assert ISO_TIME.match(invitee["updated_at"])


async def test_group_booking_lists_every_invitee(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    guests = [{"name": f"Guest {n}", "email": f"guest{n}@example.org"} for n in range(3)]
    booked = await book(sandbox, ada, invitees=guests, invitee_limit=5)
    path = f"/scheduled_events/{uuid_of(booked['event']['uri'])}"
    _, event, _ = await sandbox.api("GET", path, ada.token)
    assert event["resource"]["invitees_counter"] == {"total": 3, "active": 3, "limit": 5}
    status, body, _ = await sandbox.api("GET", f"{path}/invitees", ada.token)
    assert status == 200
    assert sorted(i["email"] for i in body["collection"]) == [g["email"] for g in guests]
    assert all(i["event"] == booked["event"]["uri"] for i in body["collection"])
    assert body["pagination"]["count"] == 3


async def test_invitees_filter_by_status_and_email_and_paginate(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    guests = [{"name": f"Guest {n}", "email": f"guest{n}@example.org"} for n in range(3)]
    booked = await book(sandbox, ada, invitees=guests)
    leaver = booked["invitees"][1]
    await sandbox.control(
        "POST", f"/_sandbox/invitees/{uuid_of(leaver['uri'])}/cancel", {}, expect=201
    )
    event_path = f"/scheduled_events/{uuid_of(booked['event']['uri'])}"
    _, event, _ = await sandbox.api("GET", event_path, ada.token)
    assert event["resource"]["status"] == "active"
    assert event["resource"]["invitees_counter"] == {"total": 3, "active": 2, "limit": 3}
    path = f"{event_path}/invitees"
    _, canceled, _ = await sandbox.api("GET", path, ada.token, params={"status": "canceled"})
    assert [i["uri"] for i in canceled["collection"]] == [leaver["uri"]]
    _, active, _ = await sandbox.api("GET", path, ada.token, params={"status": "active"})
    assert len(active["collection"]) == 2
    _, by_email, _ = await sandbox.api(
        "GET", path, ada.token, params={"email": "GUEST2@example.org"}
    )
    assert [i["email"] for i in by_email["collection"]] == ["guest2@example.org"]
    items = await collect_pages(sandbox, ada, path, {"count": "1"})
    assert sorted(i["uri"] for i in items) == sorted(i["uri"] for i in booked["invitees"])


async def test_invitee_of_another_event_is_not_found(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    one = await book(sandbox, ada)
    two = await book(sandbox, ada, start_time="2030-03-06T10:00:00Z")
    path = (
        f"/scheduled_events/{uuid_of(one['event']['uri'])}"
        f"/invitees/{uuid_of(two['invitees'][0]['uri'])}"
    )
    status, body, _ = await sandbox.api("GET", path, ada.token)
    assert (status, body) == (404, NOT_FOUND)


@pytest.mark.parametrize(
    "location_type",
    ["physical", "zoom", "microsoft_teams_conference", "outbound_call", "custom", "ask_invitee"],
)
async def test_event_location_carries_its_type(sandbox: SandboxDriver, location_type: str) -> None:
    ada = await connect(sandbox, "ada@example.com")
    booked = await book(sandbox, ada, location_type=location_type)
    _, body, _ = await sandbox.api(
        "GET", f"/scheduled_events/{uuid_of(booked['event']['uri'])}", ada.token
    )
    assert body["resource"]["location"]["type"] == location_type


async def test_booking_with_an_unknown_location_type_is_rejected(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    status = await sandbox.control(
        "POST",
        f"/_sandbox/users/{ada.id}/bookings",
        {
            "start_time": START,
            "invitees": [{"name": "Grace Guest", "email": "grace@example.org"}],
            "location_type": "carrier_pigeon",
        },
        expect=400,
    )
    assert "location_type" in status["message"]
    _, body, _ = await sandbox.api("GET", "/scheduled_events", ada.token, params={"user": ada.user})
    assert body["collection"] == []


# ------------------------------------------------------------ rate limits
async def test_every_api_response_carries_rate_limit_headers(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    responses = [
        await sandbox.api("GET", "/users/me", ada.token),
        await sandbox.api("GET", "/users/nobody", ada.token),
        await sandbox.api("GET", "/webhook_subscriptions", ada.token),
        await sandbox.api("GET", "/scheduled_events", ada.token, params={"user": ada.user}),
        await sandbox.api("GET", "/no_such_resource", ada.token),
        await sandbox.api("PUT", "/users/me", ada.token),
    ]
    assert [status for status, _, _ in responses] == [200, 404, 400, 200, 404, 405]
    remaining = []
    for _, _, headers in responses:
        assert int(headers["X-RateLimit-Limit"]) == 500
        reset = int(headers["X-RateLimit-Reset"])
        assert 0 < reset <= 60
        remaining.append(int(headers["X-RateLimit-Remaining"]))
    assert remaining == [499, 498, 497, 496, 495, 494]


async def test_paid_user_past_the_limit_gets_429(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    await sandbox.settings(rate_limit_paid=3)
    answers = [await sandbox.api("GET", "/users/me", ada.token) for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    assert [h["X-RateLimit-Remaining"] for _, _, h in answers] == ["2", "1", "0", "0"]
    _, body, headers = answers[-1]
    assert headers["X-RateLimit-Limit"] == "3"
    assert 0 < int(headers["X-RateLimit-Reset"]) <= 60
    assert body["title"] == "Too Many Requests"


async def test_rate_limit_is_per_user(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    eve = await connect(sandbox, "eve@example.net")
    await sandbox.settings(rate_limit_paid=2)
    for _ in range(2):
        assert (await sandbox.api("GET", "/users/me", ada.token))[0] == 200
    assert (await sandbox.api("GET", "/users/me", ada.token))[0] == 429
    status, _, headers = await sandbox.api("GET", "/users/me", eve.token)
    assert status == 200
    assert headers["X-RateLimit-Remaining"] == "1"


async def test_free_plan_uses_the_free_rate_limit(sandbox: SandboxDriver) -> None:
    fred = await connect(sandbox, "fred@example.com", sandbox_plan="free")
    await sandbox.settings(rate_limit_free=2)
    answers = [await sandbox.api("GET", "/users/me", fred.token) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 429]
    assert all(h["X-RateLimit-Limit"] == "2" for _, _, h in answers)
    assert answers[-1][2]["X-RateLimit-Remaining"] == "0"


async def test_free_plan_default_limit_is_fifty(sandbox: SandboxDriver) -> None:
    fred = await connect(sandbox, "fred@example.com", sandbox_plan="free")
    _, _, headers = await sandbox.api("GET", "/users/me", fred.token)
    assert headers["X-RateLimit-Limit"] == "50"
    assert headers["X-RateLimit-Remaining"] == "49"


async def test_rate_limit_window_resets_after_a_minute(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    await sandbox.settings(rate_limit_paid=3)
    for _ in range(3):
        await sandbox.api("GET", "/users/me", ada.token)
    assert (await sandbox.api("GET", "/users/me", ada.token))[0] == 429
    await sandbox.control("POST", "/_sandbox/clock/advance", {"seconds": 61}, expect=200)
    status, _, headers = await sandbox.api("GET", "/users/me", ada.token)
    assert status == 200
    assert headers["X-RateLimit-Remaining"] == "2"
    assert headers["X-RateLimit-Reset"] == "60"


# ------------------------------------------------------------------ faults
async def test_injected_500s_answer_the_documented_envelope_then_recover(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    await sandbox.fault("GET /users/me", status=500, count=2)
    answers = [await sandbox.api("GET", "/users/me", ada.token) for _ in range(3)]
    assert [status for status, _, _ in answers] == [500, 500, 200]
    assert answers[0][1] == SERVER_ERROR
    assert answers[1][1] == SERVER_ERROR
    assert answers[2][1]["resource"]["uri"] == ada.user


async def test_fault_only_hits_its_route(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    await sandbox.fault("GET /users/{uuid}", status=503)
    status, _, _ = await sandbox.api("GET", "/users/me", ada.token)
    assert status == 200
    status, body, _ = await sandbox.api("GET", f"/users/{ada.id}", ada.token)
    assert status == 503
    assert body["title"] == "Service Unavailable"


async def test_injected_429_announces_its_reset(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    await sandbox.fault("GET /users/me", status=429, reset_seconds=7)
    status, _, headers = await sandbox.api("GET", "/users/me", ada.token)
    assert status == 429
    assert headers["X-RateLimit-Remaining"] == "0"
    assert headers["X-RateLimit-Reset"] == "7"
    assert (await sandbox.api("GET", "/users/me", ada.token))[0] == 200


async def test_injected_fault_with_a_body_answers_that_body(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    custom = {"title": "Odd", "message": "Something odd"}
    await sandbox.fault("GET /users/me", status=502, body=custom)
    status, body, _ = await sandbox.api("GET", "/users/me", ada.token)
    assert (status, body) == (502, custom)


async def test_reset_connection_fault_is_a_client_connection_error(
    sandbox: SandboxDriver,
) -> None:
    ada = await connect(sandbox, "ada@example.com")
    # aiohttp's client retries an idempotent request once after a disconnect, so two resets.
    await sandbox.fault("GET /users/me", reset_connection=True, count=2)
    with pytest.raises(aiohttp.ClientError):
        await sandbox.api("GET", "/users/me", ada.token)
    await sandbox.control("DELETE", "/_sandbox/faults", expect=204)
    status, _, _ = await sandbox.api("GET", "/users/me", ada.token)
    assert status == 200


async def test_reset_connection_on_create_leaves_no_subscription(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    await sandbox.fault("POST /webhook_subscriptions", reset_connection=True)
    with pytest.raises(aiohttp.ClientError):
        await sandbox.api(
            "POST",
            "/webhook_subscriptions",
            ada.token,
            json=hook_body(ada, "https://app.example.com/hook"),
        )
    _, body, _ = await sandbox.api(
        "GET", "/webhook_subscriptions", ada.token, params=user_hooks_query(ada)
    )
    assert body["collection"] == []
    await create_hook(sandbox, ada, "https://app.example.com/hook")


async def test_latency_fault_delays_the_answer(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    await sandbox.fault("GET /users/me", latency_ms=300)
    started = time.monotonic()
    status, _, _ = await sandbox.api("GET", "/users/me", ada.token)
    elapsed = time.monotonic() - started
    assert status == 200
    assert elapsed >= 0.3


async def test_wildcard_fault_matches_any_api_route(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    await sandbox.fault("*", status=500, count=2)
    first, _, _ = await sandbox.api(
        "GET", "/scheduled_events", ada.token, params={"user": ada.user}
    )
    second, _, _ = await sandbox.api("GET", f"/users/{ada.id}", ada.token)
    third, _, _ = await sandbox.api("GET", "/users/me", ada.token)
    assert (first, second, third) == (500, 500, 200)


async def test_clearing_faults_removes_pending_ones(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    await sandbox.fault("GET /users/me", status=500, count=5)
    assert (await sandbox.api("GET", "/users/me", ada.token))[0] == 500
    await sandbox.control("DELETE", "/_sandbox/faults", expect=204)
    assert (await sandbox.api("GET", "/users/me", ada.token))[0] == 200


@pytest.mark.parametrize(
    "spec",
    [
        {"route": "GET /users/me"},
        {"status": 500},
        {"route": "GET /users/me", "status": 999},
        {"route": "GET /users/me", "status": 500, "count": 0},
        {"route": "GET /users/me", "status": 500, "colour": "red"},
        {"route": "GET /users/me", "status": "five hundred"},
    ],
)
async def test_invalid_fault_spec_is_rejected(sandbox: SandboxDriver, spec: dict[str, Any]) -> None:
    ada = await connect(sandbox, "ada@example.com")
    body = await sandbox.control("POST", "/_sandbox/faults", spec, expect=400)
    assert isinstance(body["message"], str)
    assert (await sandbox.api("GET", "/users/me", ada.token))[0] == 200


async def test_routes_lists_the_api_route_names(sandbox: SandboxDriver) -> None:
    body = await sandbox.control("GET", "/_sandbox/routes", expect=200)
    routes = set(body["routes"])
    assert {
        "GET /users/me",
        "GET /users/{uuid}",
        "POST /webhook_subscriptions",
        "GET /webhook_subscriptions",
        "GET /webhook_subscriptions/{uuid}",
        "DELETE /webhook_subscriptions/{uuid}",
        "GET /scheduled_events",
        "GET /scheduled_events/{uuid}",
        "GET /scheduled_events/{uuid}/invitees",
        "GET /scheduled_events/{uuid}/invitees/{invitee_uuid}",
        "POST /oauth/token",
    } <= routes
    assert not any(r.startswith("HEAD ") for r in routes)


# ----------------------------------------------------------------- call log
async def test_call_log_records_method_route_status_and_user(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    await sandbox.control("DELETE", "/_sandbox/calls", expect=204)
    await sandbox.api("GET", "/users/me", ada.token)
    await sandbox.api("GET", "/webhook_subscriptions/nope", ada.token)
    await sandbox.api("GET", "/users/me", "garbage")
    await sandbox.api("DELETE", "/nowhere", ada.token)
    calls = await sandbox.calls()
    assert [(c["method"], c["route"], c["status"], c["user"]) for c in calls] == [
        ("GET", "GET /users/me", 200, ada.user),
        ("GET", "GET /webhook_subscriptions/{uuid}", 404, ada.user),
        ("GET", "GET /users/me", 401, None),
        ("DELETE", "DELETE /nowhere", 404, ada.user),
    ]
    assert calls[1]["path"] == "/webhook_subscriptions/nope"
    assert [c["seq"] for c in calls] == sorted(c["seq"] for c in calls)


async def test_call_log_filters_by_route(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    await sandbox.api("GET", "/users/me", ada.token)
    await sandbox.api("GET", f"/users/{ada.id}", ada.token)
    calls = await sandbox.calls("GET /users/{uuid}")
    assert [(c["path"], c["status"]) for c in calls] == [(f"/users/{ada.id}", 200)]
    token_calls = await sandbox.calls("POST /oauth/token")
    assert len(token_calls) == 1
    assert token_calls[0]["status"] == 200


# ------------------------------------------------------------- unknown paths
async def test_unknown_api_path_is_not_found_in_the_api_envelope(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    status, body, _ = await sandbox.api("GET", "/event_types/none/at/all", ada.token)
    assert (status, body) == (404, NOT_FOUND)
    status, body, headers = await sandbox.api("GET", "/no_such_thing", None)
    assert (status, body) == (404, NOT_FOUND)
    assert all(name in headers for name in RATE_HEADERS)


async def test_wrong_method_is_answered_in_the_api_envelope(sandbox: SandboxDriver) -> None:
    ada = await connect(sandbox, "ada@example.com")
    status, body, _ = await sandbox.api("PUT", "/users/me", ada.token)
    assert status == 405
    assert body["title"] == "Method Not Allowed"
