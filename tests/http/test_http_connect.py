"""Connecting Calendly through the HTTP API and the OAuth popup callback."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

import pytest
import structlog
from litestar import Litestar
from litestar.testing import AsyncTestClient

from domain.errors import CalendlyUnavailable
from domain.model import ConnectionStatus
from entrypoints.service.http.middleware import CONTENT_SECURITY_POLICY
from tests.support.http_app import BASE_URL, JSON, Api, bearer

BINDING = "cc_oauth_binding"


class Page(HTMLParser):
    """What a browser would find in the callback page: its scripts and their JSON blocks."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.blocks: dict[str, Any] = {}
        self.inline_code: list[str] = []
        self._in: dict[str, str | None] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self._in = dict(attrs)
            self.scripts.append(self._in)
        for name, _ in attrs:
            assert not name.lower().startswith("on"), f"inline event handler {name}"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is None:
            return
        if self._in.get("type") == "application/json":
            self.blocks[str(self._in.get("id"))] = json.loads(data)
        elif data.strip():
            self.inline_code.append(data)


def cookie_header(response: Any) -> str:
    cookies = [c for c in response.headers.get_list("set-cookie") if c.startswith(BINDING)]
    assert len(cookies) == 1, cookies
    return str(cookies[0])


def secrets_of(api: Api) -> list[str]:
    values = [g.access for g in api.core.calendly.grants]
    values += [g.refresh for g in api.core.calendly.grants]
    values += [s.signing_key for s in api.core.calendly.subscriptions.values()]
    values += [c.code_verifier.reveal() for c in api.core.db.authorizations.values()]
    return values


async def test_connect_answers_the_consent_url_and_sets_the_binding_cookie(api: Api) -> None:
    response = await api.start("alice")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"authorization_url", "state", "expires_at"}
    assert body["authorization_url"].startswith("https://auth.calendly.test/oauth/authorize?")
    assert response.headers["cache-control"] == "no-store"
    cookie = cookie_header(response).lower()
    for attribute in ("httponly", "path=/oauth/calendly", "max-age=600", "samesite=lax", "secure"):
        assert attribute in cookie
    assert len(response.cookies[BINDING]) >= 43  # 32 random bytes, URL-safe base64


async def test_the_popup_page_has_no_inline_script_and_posts_the_connection(api: Api) -> None:
    calendly_user = api.core.calendly.add_user("ada@example.com", name="Ada")
    started = await api.start("alice")
    code = api.approve(started, calendly_user)

    page = await api.callback(
        {"state": started.json()["state"], "code": code}, {"accept": "text/html,*/*;q=0.8"}
    )

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    parsed = Page(page.text)
    assert parsed.inline_code == []
    assert [s.get("src") for s in parsed.scripts if s.get("src")] == ["/static/oauth-popup.js"]
    outcome = parsed.blocks["outcome"]
    assert outcome["type"] == "calendly-connect"
    assert outcome["ok"] is True
    assert outcome["connection"]["email"] == "ada@example.com"
    assert outcome["connection"]["status"] == "active"
    assert parsed.blocks["popup-settings"] == {"target_origins": ["https://app.example"]}
    # The binding is spent: the cookie is cleared.
    assert "max-age=0" in cookie_header(page).lower()
    for secret in secrets_of(api):
        assert secret not in page.text
    assert api.connection("alice").status is ConnectionStatus.ACTIVE


async def test_the_popup_script_is_served(api: Api) -> None:
    response = await api.client.get("/static/oauth-popup.js")

    assert response.status_code == 200
    assert "javascript" in response.headers["content-type"]
    assert "opener.postMessage(outcome, origin)" in response.text
    assert 'readJson("outcome")' in response.text
    assert "window.close()" in response.text


async def test_the_json_callback_answers_the_connection(api: Api) -> None:
    calendly_user = api.core.calendly.add_user("ada@example.com")
    started = await api.start("alice")

    response = await api.callback(
        {"state": started.json()["state"], "code": api.approve(started, calendly_user)}, JSON
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["switched_account"] is False
    assert body["connection"]["email"] == "ada@example.com"
    assert body["connection"]["calendly_user_uri"] == calendly_user.uri
    assert body["connection"]["webhook_status"] == "active"
    for secret in secrets_of(api):
        assert secret not in response.text


async def test_a_state_from_another_browser_is_400_and_calendly_is_never_called(
    api: Api, app: Litestar
) -> None:
    calendly_user = api.core.calendly.add_user("ada@example.com")
    started = await api.start("alice")
    code = api.approve(started, calendly_user)

    # The victim's browser holds no binding cookie for the attacker's state, or another one.
    async with AsyncTestClient(app=app, base_url=BASE_URL) as other_browser:
        without = await other_browser.get(
            "/oauth/calendly/callback", params={"state": started.json()["state"], "code": code}
        )
    assert without.status_code == 400
    assert "another browser" in without.text
    assert api.core.calendly.calls == []
    assert "alice" not in api.core.db.connections


async def test_a_wrong_binding_cookie_is_400_and_calendly_is_never_called(
    api: Api, app: Litestar
) -> None:
    calendly_user = api.core.calendly.add_user("ada@example.com")
    started = await api.start("alice")
    code = api.approve(started, calendly_user)

    async with AsyncTestClient(app=app, base_url=BASE_URL) as other_browser:
        other_browser.cookies.set(BINDING, "forged-binding", domain="api.example")
        response = await other_browser.get(
            "/oauth/calendly/callback",
            params={"state": started.json()["state"], "code": code},
            headers=JSON,
        )

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("authorization-state-invalid")
    assert api.core.calendly.calls == []


@pytest.mark.parametrize("params", [{}, {"code": "c"}, {"state": ""}, {"state": "unknown"}])
async def test_a_missing_or_unknown_state_is_400(api: Api, params: dict[str, str]) -> None:
    page = await api.callback(params)
    as_json = await api.callback(params, JSON)

    assert page.status_code == 400
    assert Page(page.text).blocks["outcome"]["ok"] is False
    assert as_json.status_code == 400
    assert as_json.json()["type"].endswith("authorization-state-invalid")
    assert api.core.calendly.calls == []


async def test_a_replayed_callback_is_400_and_leaves_the_connection_alone(api: Api) -> None:
    calendly_user = api.core.calendly.add_user("ada@example.com")
    started = await api.start("alice")
    params = {"state": started.json()["state"], "code": api.approve(started, calendly_user)}
    assert (await api.callback(params, JSON)).status_code == 200
    before = api.connection("alice")

    again = await api.callback(params, JSON)

    assert again.status_code == 400
    assert api.connection("alice") == before


async def test_a_replayed_code_with_a_fresh_state_is_400(api: Api) -> None:
    calendly_user = api.core.calendly.add_user("ada@example.com")
    first = await api.start("alice")
    code = api.approve(first, calendly_user)
    assert (await api.callback({"state": first.json()["state"], "code": code}, JSON)).is_success
    before = api.connection("alice")

    second = await api.start("alice")
    replay = await api.callback({"state": second.json()["state"], "code": code}, JSON)

    assert replay.status_code == 400
    assert "code is invalid or used" in replay.json()["detail"]
    assert api.connection("alice") == before


async def test_denied_access_is_400_with_a_clear_message(api: Api) -> None:
    started = await api.start("alice")

    page = await api.callback({"state": started.json()["state"], "error": "access_denied"})

    assert page.status_code == 400
    outcome = Page(page.text).blocks["outcome"]
    assert outcome["ok"] is False
    assert outcome["error"]["type"].endswith("authorization-denied")
    assert "access_denied" in outcome["error"]["detail"]
    assert api.core.calendly.calls == []


async def test_everything_on_the_page_is_escaped(api: Api) -> None:
    hostile = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
    calendly_user = api.core.calendly.add_user(f"{hostile}@example.com", name=hostile)
    started = await api.start("alice")
    ok = await api.callback(
        {"state": started.json()["state"], "code": api.approve(started, calendly_user)}
    )
    denied_start = await api.start("bob")
    denied = await api.callback(
        {
            "state": denied_start.json()["state"],
            "error": hostile,
            "error_description": hostile,
        }
    )
    unknown = await api.callback({"state": hostile, "code": hostile})

    for page in (ok, denied, unknown):
        assert "<script>alert" not in page.text
        assert "<img" not in page.text
        Page(page.text)  # parses, with no inline handlers and JSON blocks intact
    assert Page(ok.text).blocks["outcome"]["connection"]["name"] == hostile


async def test_an_account_connected_to_another_user_is_409(api: Api) -> None:
    shared = await api.connect("alice")
    started = await api.start("bob")

    page = await api.callback(
        {"state": started.json()["state"], "code": api.approve(started, shared)}
    )

    assert page.status_code == 409
    error = Page(page.text).blocks["outcome"]["error"]
    assert error["type"].endswith("account-already-connected")
    # A sentence for people, with the next step.
    assert error["detail"].startswith("This Calendly account is already connected")
    assert "different account" in error["detail"]
    assert "bob" not in api.core.db.connections
    assert api.connection("alice").status is ConnectionStatus.ACTIVE


async def test_a_bearer_token_on_the_callback_must_be_the_starting_user(api: Api) -> None:
    calendly_user = api.core.calendly.add_user("ada@example.com")
    started = await api.start("alice")
    params = {"state": started.json()["state"], "code": api.approve(started, calendly_user)}

    response = await api.callback(params, {**JSON, **bearer("mallory")})

    assert response.status_code == 400
    assert "another user" in response.json()["detail"]


async def test_status_is_404_before_connecting_and_shows_no_secrets_after(api: Api) -> None:
    before = await api.client.get("/api/calendly/connection", headers=bearer("alice"))
    await api.connect("alice")
    after = await api.client.get("/api/calendly/connection", headers=bearer("alice"))

    assert before.status_code == 404
    assert after.status_code == 200
    assert after.json()["status"] == "active"
    assert after.headers["cache-control"] == "no-store"
    assert set(after.json()) == {
        "status",
        "webhook_status",
        "calendly_user_uri",
        "organization_uri",
        "email",
        "name",
        "token_expires_at",
        "last_error",
        "connected_since",
        "updated_at",
        "maintenance",
        "synced_at",
    }
    for secret in secrets_of(api):
        assert secret not in after.text


async def test_reconnect_mends_a_working_connection_without_a_cookie(api: Api) -> None:
    await api.connect("alice")

    response = await api.client.post("/api/calendly/reconnect", headers=bearer("alice"))

    assert response.status_code == 200
    body = response.json()
    assert body["outcome"] == "reconnected"
    assert body["connection"]["status"] == "active"
    assert "authorization_url" not in body
    assert not [c for c in response.headers.get_list("set-cookie") if c.startswith(BINDING)]


async def test_reconnect_without_a_grant_asks_for_authorization_and_binds_the_browser(
    api: Api,
) -> None:
    response = await api.client.post("/api/calendly/reconnect", headers=bearer("alice"))

    assert response.status_code == 200
    body = response.json()
    assert body["outcome"] == "authorization_required"
    assert body["authorization_url"].startswith("https://auth.calendly.test/")
    assert "connection" not in body
    assert "httponly" in cookie_header(response).lower()


async def test_disconnect_answers_what_happened_and_twice_is_harmless(api: Api) -> None:
    await api.connect("alice")

    first = await api.client.delete("/api/calendly/connection", headers=bearer("alice"))
    second = await api.client.delete("/api/calendly/connection", headers=bearer("alice"))

    assert first.status_code == 200
    assert first.json()["connection"]["status"] == "disconnected"
    assert first.json()["subscription_deleted"] is True
    assert first.json()["revoke_failed"] is False
    assert first.json()["already_disconnected"] is False
    assert second.status_code == 200
    assert second.json()["already_disconnected"] is True


async def test_a_failed_revoke_is_reported_and_logged(api: Api) -> None:
    await api.connect("alice")
    api.core.calendly.fail_next("revoke", CalendlyUnavailable(503, None))

    with structlog.testing.capture_logs() as logs:
        response = await api.client.delete("/api/calendly/connection", headers=bearer("alice"))

    assert response.status_code == 200
    assert response.json()["revoke_failed"] is True
    assert api.connection("alice").tokens is None
    warnings = [e for e in logs if e["event"] == "calendly.revoke_failed"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"


async def test_another_user_reaches_nothing_of_alices(api: Api) -> None:
    await api.connect("alice")
    before = api.connection("alice")

    status = await api.client.get("/api/calendly/connection", headers=bearer("bob"))
    disconnect = await api.client.delete("/api/calendly/connection", headers=bearer("bob"))
    reconnect = await api.client.post("/api/calendly/reconnect", headers=bearer("bob"))

    assert status.status_code == 404
    assert disconnect.json() == {
        "connection": None,
        "subscription_deleted": False,
        "revoke_failed": False,
        "already_disconnected": True,
    }
    assert reconnect.json()["outcome"] == "authorization_required"
    assert api.connection("alice") == before
    for response in (status, disconnect, reconnect):
        assert "alice" not in response.text


async def test_the_status_shows_when_the_worker_keeps_failing_on_the_connection(
    api: Api,
) -> None:
    from datetime import UTC, datetime

    from domain.ports import MaintenanceTrouble

    await api.connect("alice")
    healthy = await api.client.get("/api/calendly/connection", headers=bearer("alice"))
    assert healthy.json()["maintenance"] is None
    assert healthy.json()["synced_at"] is None  # the worker has not synced it yet
    api.core.db.synced["alice"] = datetime(2030, 1, 1, 11, 59, 30, tzinfo=UTC)
    synced = await api.client.get("/api/calendly/connection", headers=bearer("alice"))
    assert synced.json()["synced_at"] == "2030-01-01T11:59:30Z"
    assert synced.json()["maintenance"] is None  # synced, and nothing failing
    api.core.db.trouble["alice"] = MaintenanceTrouble(
        failures=3,
        last_error="CalendlyUnavailable: Calendly answered 503",
        retry_at=datetime(2030, 1, 1, 12, 0, tzinfo=UTC),
    )
    failing = await api.client.get("/api/calendly/connection", headers=bearer("alice"))
    assert failing.status_code == 200
    assert failing.json()["maintenance"] == {
        "failures": 3,
        "last_error": "CalendlyUnavailable: Calendly answered 503",
        "retry_at": "2030-01-01T12:00:00Z",
    }
