"""The product page in a real browser (Debian's chromium) against a scripted API: what it says
and where it goes must be true to the state the API reports. The page makes its API calls
through the JS client (/client/v1/calendly-connect.js, answered from clients/js/)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.support.page_server import (
    ORIGIN,
    STATE,
    ScriptedApi,
    authorization_required,
    connection,
    meeting,
    problem,
)


@pytest.fixture
def api() -> ScriptedApi:
    return ScriptedApi()


@pytest.fixture
def context(browser: Browser, api: ScriptedApi) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    # On the context, not the page: the Calendly popup is answered too.
    context.route(f"{ORIGIN}/**", api.serve)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def sign_in(page: Page, user: str = "dora", hash_: str = "") -> None:
    page.goto(f"{ORIGIN}/{hash_}")
    page.get_by_label("Sign in as someone else").fill(user)
    page.get_by_role("button", name="Sign in", exact=True).last.click()
    expect(page.get_by_text("Signed in as")).to_be_visible()


# ------------------------------------------------------------------ meetings
def test_the_upcoming_count_leaves_out_canceled_meetings(page: Page, api: ScriptedApi) -> None:
    now = datetime.now(UTC)
    api.connection = connection()
    api.meetings = [
        meeting("soon", now + timedelta(hours=2)),
        meeting("called-off", now + timedelta(hours=3), status="canceled"),
        meeting("now", now - timedelta(minutes=10), minutes=60),
        meeting("called-off-now", now - timedelta(minutes=10), minutes=60, status="canceled"),
        meeting("done", now - timedelta(days=2)),
    ]
    sign_in(page, hash_="#/meetings")

    expect(page.get_by_text("Meeting soon")).to_be_visible()
    # The canceled upcoming meeting is still listed (marked canceled), but not counted.
    expect(page.get_by_text("Meeting called-off", exact=True)).to_be_visible()
    upcoming = page.locator("#upcoming-title .count")
    expect(upcoming).to_have_text("2")
    expect(upcoming).to_have_attribute("aria-label", "2 meetings")


def test_a_meeting_whose_details_are_on_the_way_says_so_and_shows_its_invitee(
    page: Page, api: ScriptedApi
) -> None:
    # A delivery in Calendly's older shape: the invitee is known, the event is being read.
    guest = {
        "invitee_uri": "https://api.calendly.com/scheduled_events/E1/invitees/I1",
        "email": "zoe@example.org",
        "name": "Zoë Ångström",
        "status": "active",
        "rescheduled": False,
        "old_invitee_uri": None,
        "new_invitee_uri": None,
        "no_show": False,
        "cancellation": None,
    }
    api.connection = connection()
    api.meetings = [
        meeting(
            "hidden",
            datetime.now(UTC) + timedelta(days=1),
            details="unavailable",
            details_error="Calendly answered 404 for this event",
        )
    ]
    # It arrives live (no time yet, so no date range the page reads holds it).
    api.live_meetings = [
        meeting(
            "legacy",
            datetime.now(UTC),
            name=None,
            start_time=None,
            end_time=None,
            details="pending",
            invitees=[guest],
        ),
        meeting(
            "retrying",
            datetime.now(UTC),
            name=None,
            start_time=None,
            end_time=None,
            details="pending",
            details_error="Calendly answered 503 for this event; trying again",
        ),
    ]
    sign_in(page, hash_="#/meetings")
    expect(page.locator("#meeting-legacy-title")).to_have_text(
        "Meeting details on the way from Calendly"
    )
    expect(page.get_by_text("Updating from Calendly")).to_have_count(2)
    expect(page.get_by_text("Time on the way from Calendly")).to_have_count(2)
    expect(page.get_by_text("Zoë Ångström")).to_be_visible()
    expect(page.get_by_text("Details unavailable")).to_be_visible()
    expect(page.get_by_text("Calendly answered 404 for this event", exact=False)).to_be_visible()
    expect(page.get_by_text("Calendly answered 503 for this event", exact=False)).to_be_visible()


def test_load_more_reads_the_next_upcoming_page_also_after_a_failed_try(
    page: Page, api: ScriptedApi
) -> None:
    now = datetime.now(UTC)
    api.connection = connection()
    api.meetings = [meeting(f"u{n:02}", now + timedelta(hours=1 + n)) for n in range(55)]
    api.failing_next_pages = 1
    sign_in(page, hash_="#/meetings")
    upcoming = page.locator("#upcoming-title .count")
    expect(upcoming).to_have_text("50")  # the page reads 50 at a time

    more = page.get_by_role("button", name="Load more")
    more.click()
    expect(page.get_by_role("alert")).to_contain_text("Service temporarily unavailable")
    expect(upcoming).to_have_text("50")
    more.click()  # the client's paging ended with the failure: read again up to there

    expect(upcoming).to_have_text("55")
    expect(page.get_by_text("Meeting u54")).to_be_visible()
    expect(page.get_by_role("button", name="Load more")).to_have_count(0)


def test_the_empty_meetings_page_links_the_sandbox_booking_page_when_the_page_knows_it(
    page: Page, api: ScriptedApi
) -> None:
    api.sandbox_url = "http://127.0.0.1:8765"
    api.connection = connection(calendly_user_uri="http://127.0.0.1:8765/users/u-42")
    sign_in(page, hash_="#/meetings")

    link = page.get_by_role("link", name="the sandbox's booking page")
    expect(link).to_be_visible()
    expect(link).to_have_attribute("href", "http://127.0.0.1:8765/_sandbox/users/u-42/book")


def test_the_sandbox_link_goes_to_its_users_when_the_account_is_not_one_of_its_users(
    page: Page, api: ScriptedApi
) -> None:
    api.sandbox_url = "http://127.0.0.1:8765"
    api.connection = connection()  # an account elsewhere
    sign_in(page, hash_="#/meetings")

    link = page.get_by_role("link", name="the sandbox's booking page")
    expect(link).to_have_attribute("href", "http://127.0.0.1:8765/_sandbox/")


def test_without_a_known_sandbox_the_empty_meetings_page_links_nothing(
    page: Page, api: ScriptedApi
) -> None:
    api.connection = connection()
    sign_in(page, hash_="#/meetings")

    expect(page.get_by_text("No meetings yet")).to_be_visible()
    expect(page.get_by_text("sandbox's booking page")).to_be_visible()
    expect(page.locator(".empty a")).to_have_count(0)


# ------------------------------------------------------------------ sign-in
def test_sign_in_lands_on_meetings_when_calendly_is_connected(page: Page, api: ScriptedApi) -> None:
    api.connection = connection()
    sign_in(page)

    expect(page).to_have_url(f"{ORIGIN}/#/meetings")
    expect(page.get_by_role("heading", name="Meetings", level=1)).to_be_visible()


@pytest.mark.parametrize(
    "state",
    [None, connection(status="disconnected", webhook_status="missing")],
    ids=["never-connected", "disconnected"],
)
def test_sign_in_lands_on_calendar_settings_when_calendly_is_not_connected(
    page: Page, api: ScriptedApi, state: dict[str, object] | None
) -> None:
    api.connection = state
    sign_in(page)

    expect(page).to_have_url(f"{ORIGIN}/#/settings/calendar")
    expect(page.get_by_role("button", name="Connect with Calendly")).to_be_visible()


def test_sign_in_keeps_the_route_the_url_named(page: Page, api: ScriptedApi) -> None:
    api.connection = connection()
    sign_in(page, hash_="#/settings/calendar")

    expect(page.get_by_role("button", name="Disconnect")).to_be_visible()
    expect(page).to_have_url(f"{ORIGIN}/#/settings/calendar")


def test_after_signing_out_the_next_sign_in_lands_by_its_own_connection(
    page: Page, api: ScriptedApi
) -> None:
    sign_in(page, "nobody")
    expect(page).to_have_url(f"{ORIGIN}/#/settings/calendar")
    page.get_by_role("button", name="Sign out").click()

    api.connection = connection()
    page.get_by_label("Sign in as someone else").fill("ada")
    page.get_by_role("button", name="Sign in", exact=True).last.click()

    expect(page).to_have_url(f"{ORIGIN}/#/meetings")


# -------------------------------------------------------------- calendar card
def test_a_reconnect_when_nothing_was_broken_does_not_say_working_again(
    page: Page, api: ScriptedApi
) -> None:
    api.connection = connection()
    sign_in(page, hash_="#/settings/calendar")
    page.get_by_role("button", name="Reconnect", exact=True).click()

    expect(page.get_by_text("Calendly connection checked")).to_be_visible()
    expect(page.get_by_text("Everything is working.", exact=True)).to_be_visible()
    expect(page.get_by_text("working again")).to_have_count(0)


def test_a_free_plan_connection_says_how_fresh_its_meetings_are(
    page: Page, api: ScriptedApi
) -> None:
    synced = datetime.now(UTC) - timedelta(minutes=3)
    api.connection = connection(
        webhook_status="unavailable_plan", synced_at=synced.isoformat().replace("+00:00", "Z")
    )
    sign_in(page, hash_="#/settings/calendar")

    freshness = page.locator("[data-freshness]")
    expect(freshness).to_have_text(
        "Last synced with Calendly 3 minutes ago. While this page is open, it is synced more often."
    )


def test_a_free_plan_connection_not_synced_yet_says_so(page: Page, api: ScriptedApi) -> None:
    api.connection = connection(webhook_status="unavailable_plan", synced_at=None)
    sign_in(page, hash_="#/settings/calendar")
    expect(page.locator("[data-freshness]")).to_have_text(
        "Waiting for the first sync with Calendly."
    )


def test_a_connection_with_webhooks_says_nothing_of_freshness(page: Page, api: ScriptedApi) -> None:
    api.connection = connection()
    sign_in(page, hash_="#/settings/calendar")
    expect(page.get_by_role("button", name="Reconnect", exact=True)).to_be_visible()
    expect(page.locator("[data-freshness]")).to_have_count(0)


@pytest.mark.parametrize(
    "broken",
    [
        {"webhook_status": "disabled"},
        {"webhook_status": "missing"},
        {"maintenance": {"failures": 4, "last_error": "timeout", "retry_at": None}},
    ],
    ids=["webhook-disabled", "webhook-missing", "maintenance-failing"],
)
def test_a_reconnect_that_mended_something_says_it_is_working_again(
    page: Page, api: ScriptedApi, broken: dict[str, object]
) -> None:
    api.connection = connection(**broken)
    api.reconnect = {"outcome": "reconnected", "connection": connection()}
    sign_in(page, hash_="#/settings/calendar")
    page.get_by_role("button", name="Reconnect", exact=True).first.click()

    expect(page.get_by_text("Calendly reconnected")).to_be_visible()
    expect(page.get_by_text("Everything is working again.")).to_be_visible()


def test_an_account_connected_to_another_user_says_so_and_what_to_do_next(
    page: Page, api: ScriptedApi
) -> None:
    api.popup_outcome = {
        "ok": False,
        "error": problem(
            409,
            "account-already-connected",
            "Calendly account already connected",
            "this Calendly account is already connected to another user",
        ),
    }
    sign_in(page, hash_="#/settings/calendar")
    with page.expect_popup():
        page.get_by_role("button", name="Connect with Calendly").click()

    alert = page.get_by_role("alert").filter(has_text="This Calendly account is in use")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text(
        "It is connected to another user of this app. Sign in to Calendly with a different "
        "account, or disconnect it from the other user first."
    )


def test_a_success_message_goes_when_the_user_leaves_the_page(page: Page, api: ScriptedApi) -> None:
    api.popup_outcome = {"ok": True, "connection": connection()}
    sign_in(page, hash_="#/settings/calendar")
    with page.expect_popup():
        page.get_by_role("button", name="Connect with Calendly").click()
    expect(page.get_by_text("Calendly connected")).to_be_visible()

    page.get_by_role("link", name="Meetings").click()
    expect(page.get_by_role("heading", name="Meetings", level=1)).to_be_visible()
    page.get_by_role("link", name="Calendar").click()

    expect(page.get_by_role("button", name="Disconnect")).to_be_visible()
    expect(page.get_by_text("Calendly connected")).to_have_count(0)


def test_signing_in_with_a_token_of_a_user_who_never_connected_logs_no_error(
    page: Page, api: ScriptedApi
) -> None:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{ORIGIN}/")
    page.get_by_text("Sign in with a bearer token instead").click()
    # Only the subject is read (for display); the service checks the signature.
    page.get_by_label("Bearer token").fill("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0aW5hIn0.c2ln")
    page.get_by_role("button", name="Sign in", exact=True).last.click()

    expect(page.get_by_role("button", name="Connect with Calendly")).to_be_visible()
    expect(page.locator("#account-name")).to_have_text("tina")
    assert "GET /api/calendly/connection" not in api.requests
    assert errors == []


def test_a_handed_off_authorization_is_completed_by_the_page(page: Page, api: ScriptedApi) -> None:
    """The popup hands Calendly's code to the page (no binding cookie reached the callback):
    the page completes it with the verifier whose challenge went with the start."""
    api.popup_outcome = {"ok": True, "stage": "authorized", "code": "code-1"}
    api.completed_connection = connection(email="grace@example.org")
    sign_in(page, hash_="#/settings/calendar")
    with page.expect_popup():
        page.get_by_role("button", name="Connect with Calendly").click()

    expect(page.get_by_text("Calendly connected")).to_be_visible()
    expect(page.get_by_text("Connected as grace@example.org.")).to_be_visible()
    expect(page.get_by_role("button", name="Disconnect")).to_be_visible()
    [start] = api.bodies["POST /api/calendly/connect"]
    [complete] = api.bodies["POST /api/calendly/connect/complete"]
    assert complete["state"] == STATE
    assert complete["code"] == "code-1"
    digest = hashlib.sha256(complete["completion_verifier"].encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == start["completion_challenge"]


def test_an_account_in_use_refused_at_completion_is_worded_by_the_page(
    page: Page, api: ScriptedApi
) -> None:
    api.popup_outcome = {"ok": True, "stage": "authorized", "code": "code-1"}
    api.complete = (
        409,
        problem(409, "account-already-connected", "Calendly account already connected", "No."),
    )
    sign_in(page, hash_="#/settings/calendar")
    with page.expect_popup():
        page.get_by_role("button", name="Connect with Calendly").click()

    alert = page.get_by_role("alert").filter(has_text="This Calendly account is in use")
    expect(alert).to_contain_text("It is connected to another user of this app.")
    expect(page.get_by_role("button", name="Connect with Calendly")).to_be_visible()


def test_a_blocked_reconnect_popup_continues_from_the_next_click(
    page: Page, api: ScriptedApi
) -> None:
    """The reconnect's popup opens after the service answered, so a browser may block it:
    "Continue to Calendly" (PopupBlockedError.continue()) opens it from a new click."""
    needs_approval = connection(status="needs_reauth", last_error="invalid_grant")
    api.connection = needs_approval
    api.reconnect = authorization_required(needs_approval)
    api.popup_outcome = {"ok": True, "connection": connection()}
    sign_in(page, hash_="#/settings/calendar")
    # The browser blocks the next popup.
    page.evaluate(
        """() => {
          const open = window.open.bind(window);
          let block = 1;
          window.open = (...args) => (block-- > 0 ? null : open(...args));
        }"""
    )
    page.get_by_role("button", name="Reconnect").click()

    status = page.get_by_role("status").filter(has_text="Continue to Calendly to approve access")
    expect(status).to_be_visible()
    continue_button = page.get_by_role("button", name="Continue to Calendly")
    with page.expect_popup():
        continue_button.click()

    expect(page.get_by_text("Calendly reconnected")).to_be_visible()
    expect(page.get_by_text("Connected as ada@example.com.")).to_be_visible()
    expect(page.get_by_role("button", name="Continue to Calendly")).to_have_count(0)
    assert api.requests.count("POST /api/calendly/reconnect") == 1


def test_disconnecting_says_what_happened_and_offers_to_connect_again(
    page: Page, api: ScriptedApi
) -> None:
    api.connection = connection()
    sign_in(page, hash_="#/settings/calendar")
    page.get_by_role("button", name="Disconnect").click()
    page.get_by_role("dialog").get_by_role("button", name="Disconnect").click()

    expect(page.get_by_text("Calendly disconnected")).to_be_visible()
    expect(page.locator(".message")).to_contain_text(
        "Meetings you already received stay in your list."
    )
    expect(page.get_by_role("button", name="Connect with Calendly")).to_be_visible()
    assert "DELETE /api/calendly/connection" in api.requests


def test_under_a_path_prefix_the_page_loads_the_client_and_calls_the_api_under_it(
    page: Page, api: ScriptedApi
) -> None:
    """The service mounted under ROOT_PATH fills the page's `cc-base-path` meta: the client
    is imported from <prefix>/client/v1/ and every call (dev login too) goes under the prefix."""
    api.base_path = "/calendly"
    api.popup_outcome = {"ok": True, "connection": connection()}
    page.goto(f"{ORIGIN}/calendly/")
    page.get_by_label("Sign in as someone else").fill("dora")
    page.get_by_role("button", name="Sign in", exact=True).last.click()
    with page.expect_popup():
        page.get_by_role("button", name="Connect with Calendly").click()
    expect(page.get_by_text("Calendly connected")).to_be_visible()
    page.get_by_role("link", name="Meetings").click()
    expect(page.get_by_text("No meetings yet")).to_be_visible()

    for call in (
        "GET /calendly/client/v1/calendly-connect.js",
        "POST /calendly/api/dev/login",
        "GET /calendly/api/live",
        "POST /calendly/api/calendly/connect",
        "GET /calendly/api/meetings",
    ):
        assert call in api.requests
    outside = [r for r in api.requests if not r.split(" ")[1].startswith(("/calendly/", "/fake-"))]
    assert outside == []
