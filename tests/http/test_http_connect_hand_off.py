"""Connecting from a page on another origin (DR-28): no cookie, the popup hands the code over.

A page on another site gets no first-party cookie from this service, so it sends the S256
challenge of a verifier it keeps; the popup hands it Calendly's code, and only that page,
with its verifier and the user's token, completes the round trip. The login-CSRF attacks of
issue 12 are played here: neither a victim approving on an attacker's `state`, nor an attacker
slipping their own code into a victim's page, connects anyone to the wrong account.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from domain.model import ConnectionStatus
from tests.fakes.calendly import FakeUser
from tests.support.http_app import BASE_URL, JSON, Api, bearer

HTML = {"accept": "text/html"}


def new_verifier() -> tuple[str, str]:
    """A page's verifier and its S256 challenge, as the JS client makes them."""
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class Outcome(HTMLParser):
    """The message the popup page posts to its opener."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.message: dict[str, Any] = {}
        self._outcome = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._outcome = tag == "script" and dict(attrs).get("id") == "outcome"

    def handle_data(self, data: str) -> None:
        if self._outcome:
            self.message = json.loads(data)
            self._outcome = False


class Page:
    """A host page on another origin: it never gets this service's cookies."""

    def __init__(self, api: Api, app: Litestar, user_id: str) -> None:
        self.api, self.app, self.user_id = api, app, user_id
        self.verifier, self.challenge = new_verifier()

    async def start(self, path: str = "/api/calendly/connect") -> dict[str, Any]:
        async with self._browser() as client:
            response = await client.post(
                path, json={"completion_challenge": self.challenge}, headers=bearer(self.user_id)
            )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def popup_lands(self, params: dict[str, str]) -> httpx.Response:
        """Calendly sends the popup back: a top-level page of the service, with no cookie."""
        async with self._browser() as client:
            return await client.get("/oauth/calendly/callback", params=params, headers=HTML)

    async def complete(
        self, state: str, code: str, *, verifier: str | None = None, user_id: str | None = None
    ) -> httpx.Response:
        async with self._browser() as client:
            return await client.post(
                "/api/calendly/connect/complete",
                json={
                    "state": state,
                    "code": code,
                    "completion_verifier": verifier or self.verifier,
                },
                headers=bearer(user_id or self.user_id),
            )

    def _browser(self) -> AsyncTestClient[Litestar]:
        return AsyncTestClient(app=self.app, base_url=BASE_URL)


def approve(api: Api, started: dict[str, Any], calendly_user: FakeUser) -> str:
    query = httpx.URL(started["authorization_url"]).params
    return api.core.calendly.issue_code(
        calendly_user, query["code_challenge"], query["redirect_uri"]
    )


async def test_the_popup_hands_the_code_to_the_page_which_completes_it(
    api: Api, app: Litestar
) -> None:
    page = Page(api, app, "alice")
    started = await page.start()
    code = approve(api, started, api.core.calendly.add_user("ada@example.com"))

    landed = await page.popup_lands({"state": started["state"], "code": code})

    assert landed.status_code == 200
    assert landed.headers["cache-control"] == "no-store"
    assert landed.headers["referrer-policy"] == "no-referrer"
    assert Outcome(landed.text).message == {
        "type": "calendly-connect",
        "ok": True,
        "state": started["state"],
        "stage": "authorized",
        "code": code,
    }
    # Nothing redeemed yet, and the round trip is still pending for the page.
    assert api.core.calendly.calls == []
    assert "alice" not in api.core.db.connections

    done = await page.complete(started["state"], code)

    assert done.status_code == 200, done.text
    assert done.json()["connection"]["status"] == "active"
    assert done.json()["connection"]["email"] == "ada@example.com"
    assert done.json()["switched_account"] is False
    assert api.connection("alice").status is ConnectionStatus.ACTIVE
    # Each state completes once.
    again = await page.complete(started["state"], code)
    assert again.status_code == 400
    assert again.json()["type"].endswith("authorization-state-invalid")


async def test_reconnect_hands_off_the_same_way(api: Api, app: Litestar) -> None:
    page = Page(api, app, "alice")
    started = await page.start("/api/calendly/reconnect")
    assert started["outcome"] == "authorization_required"
    assert started["state"]
    assert started["expires_at"]
    code = approve(api, started, api.core.calendly.add_user("ada@example.com"))

    landed = await page.popup_lands({"state": started["state"], "code": code})
    assert Outcome(landed.text).message["stage"] == "authorized"
    done = await page.complete(started["state"], code)

    assert done.status_code == 200, done.text
    assert api.connection("alice").status is ConnectionStatus.ACTIVE


async def test_a_browser_with_the_cookie_is_still_completed_by_the_popup_itself(
    api: Api,
) -> None:
    """Same site: the binding cookie proves the browser, the challenge is not needed."""
    calendly_user = api.core.calendly.add_user("ada@example.com")
    _, challenge = new_verifier()
    started = await api.client.post(
        "/api/calendly/connect",
        json={"completion_challenge": challenge},
        headers=bearer("alice"),
    )
    code = api.approve(started, calendly_user)

    landed = await api.callback({"state": started.json()["state"], "code": code}, HTML)

    message = Outcome(landed.text).message
    assert message["ok"] is True
    assert message["connection"]["status"] == "active"
    assert "code" not in message
    assert api.connection("alice").status is ConnectionStatus.ACTIVE


async def test_a_wrong_verifier_is_refused_and_does_not_spend_the_state(
    api: Api, app: Litestar
) -> None:
    page = Page(api, app, "alice")
    started = await page.start()
    code = approve(api, started, api.core.calendly.add_user("ada@example.com"))
    await page.popup_lands({"state": started["state"], "code": code})
    wrong, _ = new_verifier()

    refused = await page.complete(started["state"], code, verifier=wrong)

    assert refused.status_code == 400
    assert refused.json()["type"].endswith("authorization-state-invalid")
    assert "verifier" in refused.json()["detail"]
    assert api.core.calendly.calls == []
    # The page that holds the right verifier still completes.
    assert (await page.complete(started["state"], code)).status_code == 200


async def test_a_round_trip_started_without_a_challenge_cannot_be_completed_by_hand_off(
    api: Api, app: Litestar
) -> None:
    started = await api.start("alice")  # the cookie kind, no challenge
    code = api.approve(started, api.core.calendly.add_user("ada@example.com"))
    page = Page(api, app, "alice")

    landed = await page.popup_lands({"state": started.json()["state"], "code": code})
    assert landed.status_code == 400
    assert "another browser" in landed.text
    assert "code" not in Outcome(landed.text).message
    refused = await page.complete(started.json()["state"], code)
    assert refused.status_code == 400
    assert api.core.calendly.calls == []


async def test_login_csrf_a_victim_approving_on_the_attackers_state_connects_nobody(
    api: Api, app: Litestar
) -> None:
    """The attacker starts a connect as themselves and lures the victim to its consent URL."""
    attacker = Page(api, app, "mallory")
    started = await attacker.start()
    victims_calendly = api.core.calendly.add_user("victim@example.com")
    code = approve(api, started, victims_calendly)

    # The victim's browser lands on the callback: the code goes to the victim's own window
    # (postMessage is restricted to the app's origins); the victim's page, signed in as the
    # victim, cannot complete the attacker's state, with any verifier it has.
    landed = await attacker.popup_lands({"state": started["state"], "code": code})
    assert Outcome(landed.text).message["stage"] == "authorized"
    victim = Page(api, app, "victim")
    for verifier in (victim.verifier, attacker.verifier):
        refused = await victim.complete(started["state"], code, verifier=verifier)
        assert refused.status_code == 400
        assert refused.json()["detail"].endswith("the state belongs to another user")

    assert api.core.calendly.calls == []
    assert "mallory" not in api.core.db.connections
    assert "victim" not in api.core.db.connections


async def test_login_csrf_the_attackers_code_is_never_attached_to_the_victim(
    api: Api, app: Litestar
) -> None:
    """The attacker approves their own Calendly and slips the code into the victim's page."""
    attacker = Page(api, app, "mallory")
    attackers_start = await attacker.start()
    attackers_code = approve(api, attackers_start, api.core.calendly.add_user("evil@example.com"))
    victim = Page(api, app, "victim")
    victims_start = await victim.start()

    # With the attacker's state: it is not the victim's.
    with_their_state = await victim.complete(attackers_start["state"], attackers_code)
    assert with_their_state.status_code == 400
    # With the victim's own state: the code was issued for another PKCE challenge.
    with_own_state = await victim.complete(victims_start["state"], attackers_code)
    assert with_own_state.status_code == 400
    assert with_own_state.json()["type"].endswith("authorization-state-invalid")

    assert "victim" not in api.core.db.connections
    # The attacker's Calendly was never connected to anyone.
    assert all(
        c.account is None or c.account.email != "evil@example.com"
        for c in api.core.db.connections.values()
    )


async def test_a_denied_consent_is_posted_as_an_error_and_spends_the_state(
    api: Api, app: Litestar
) -> None:
    page = Page(api, app, "alice")
    started = await page.start()

    landed = await page.popup_lands({"state": started["state"], "error": "access_denied"})

    assert landed.status_code == 400
    message = Outcome(landed.text).message
    assert message["ok"] is False
    assert message["state"] == started["state"]
    assert message["error"]["type"].endswith("authorization-denied")
    assert (await page.complete(started["state"], "any-code")).status_code == 400


async def test_an_expired_round_trip_is_refused_in_the_popup(api: Api, app: Litestar) -> None:
    page = Page(api, app, "alice")
    started = await page.start()
    code = approve(api, started, api.core.calendly.add_user("ada@example.com"))
    api.core.clock.advance(timedelta(minutes=11))

    landed = await page.popup_lands({"state": started["state"], "code": code})

    assert landed.status_code == 400
    assert "expired" in Outcome(landed.text).message["error"]["detail"]
    assert "code" not in Outcome(landed.text).message


async def test_completing_needs_the_users_token(api: Api, app: Litestar) -> None:
    page = Page(api, app, "alice")
    started = await page.start()
    async with AsyncTestClient(app=app, base_url=BASE_URL) as client:
        response = await client.post(
            "/api/calendly/connect/complete",
            json={"state": started["state"], "code": "c", "completion_verifier": page.verifier},
        )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/calendly/connect", {"completion_challenge": "short"}, "completion_challenge"),
        ("/api/calendly/connect", {"completion_challenge": "a" * 42 + "="}, "completion_challenge"),
        ("/api/calendly/reconnect", {"completion_challenge": 7}, "completion_challenge"),
        (
            "/api/calendly/connect/complete",
            {"state": "s", "code": "c", "completion_verifier": "too-short"},
            "completion_verifier",
        ),
        ("/api/calendly/connect/complete", {"state": "s", "code": "c"}, "completion_verifier"),
        (
            "/api/calendly/connect/complete",
            {"state": "", "code": "c", "completion_verifier": "v" * 43},
            "state",
        ),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(
    api: Api, path: str, body: dict[str, Any], field: str
) -> None:
    response = await api.client.post(path, json=body, headers={**bearer("alice"), **JSON})

    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert re.search(field, response.text)
    assert api.core.calendly.calls == []
    assert api.core.db.authorizations == {}


async def test_connect_without_a_body_or_with_fields_it_does_not_know_still_works(
    api: Api,
) -> None:
    bare = await api.client.post("/api/calendly/connect", headers=bearer("alice"))
    newer = await api.client.post(
        "/api/calendly/connect", json={"from_a_newer_client": 1}, headers=bearer("alice")
    )
    for response in (bare, newer):
        assert response.status_code == 200
        assert set(response.json()) == {"authorization_url", "state", "expires_at"}
