"""A host app as people really run one, in a real browser (Debian's chromium): the example host
(examples/host-app) signs its user in with ES256 tokens published as a JWKS, loads the JS client
from the service, connects Calendly through the popup, sees a sandbox booking arrive live and
disconnects.

Run 1: the host page and the service on two origins (the popup hands the code to the page:
no cookie of the service's can reach it). Run 2: the service reached only through a reverse
proxy under `/calendly` (ROOT_PATH), the proxy stripping the prefix as nginx does: the page,
the popup, Calendly's redirect, the webhooks and the live stream all pass through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.browser import approve_as_a_new_calendly_user, book_in_the_sandbox
from tests.support.host_app import ExampleStack, example_stack
from tests.support.reverse_proxy import ReverseProxy, Route

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PREFIX = "/calendly"


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def journey(page: Page, stack: ExampleStack, *, user: str, email: str, shot: str) -> list[str]:
    """Sign in at the example, connect, book, see it live, disconnect; the URLs it asked for."""
    requests: list[str] = []
    page.context.on("request", lambda request: requests.append(request.url))
    page.goto(stack.example)
    page.get_by_test_id("signin-user").fill(user)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("user-name")).to_have_text(user)
    expect(page.get_by_test_id("connection-status")).to_have_text("Not connected")

    with page.expect_popup() as popup_info:
        page.get_by_test_id("connect-button").click()
    approve_as_a_new_calendly_user(popup_info.value, name="Ada Host", email=email)
    expect(page.get_by_test_id("connection-status")).to_have_text("Connected", timeout=10_000)
    expect(page.get_by_test_id("connection-email")).to_contain_text(email)
    expect(page.get_by_test_id("live-state")).to_have_text("live", timeout=10_000)

    book_in_the_sandbox(
        page.context,
        stack.sandbox,
        host="Ada Host",
        invitee="Grace Guest",
        email="grace@example.org",
        event="Roadmap chat",
    )

    # No reload: the meeting reaches the host page through the client's live stream.
    meetings = page.get_by_test_id("meeting-list")
    expect(meetings).to_contain_text("Roadmap chat", timeout=5_000)
    expect(meetings).to_contain_text("Grace Guest")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)

    page.get_by_test_id("disconnect-button").click()
    expect(page.get_by_test_id("connection-status")).to_have_text("Disconnected", timeout=10_000)
    return requests


def browse(browser: Browser, run: Callable[[Page], None]) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        run(context.new_page())
    finally:
        context.close()


def test_a_host_on_another_origin_connects_sees_a_booking_live_and_disconnects(
    browser: Browser,
) -> None:
    with example_stack() as stack:
        assert origin(stack.example) != origin(stack.service)
        errors: list[str] = []

        def run(page: Page) -> None:
            page.on("pageerror", lambda error: errors.append(str(error)))
            requests = journey(
                page, stack, user="host-user", email="ada@example.com", shot="host-app-live.png"
            )
            # The page talked to the service itself (CORS), through the served client.
            assert f"{stack.service}/client/v1/calendly-connect.js" in requests
            assert f"{stack.service}/api/calendly/connect/complete" in requests

        browse(browser, run)
        assert errors == []


@pytest.fixture
def proxy() -> Iterator[ReverseProxy]:
    running = ReverseProxy().start()
    try:
        yield running
    finally:
        running.stop()


def test_the_same_journey_with_the_service_under_a_prefix_behind_a_proxy(
    proxy: ReverseProxy, browser: Browser
) -> None:
    public = proxy.url + PREFIX
    with example_stack(env={"PUBLIC_BASE_URL": public}) as stack:
        assert stack.service == public
        proxy.set_routes([Route(prefix=PREFIX, upstream=stack.local, strip=True)])

        def run(page: Page) -> None:
            requests = journey(
                page, stack, user="prefix-user", email="bo@example.com", shot="host-app-prefix.png"
            )
            # The browser never reached the service but through the proxy's prefix.
            assert not [url for url in requests if url.startswith(stack.local)]
            assert f"{public}/client/v1/calendly-connect.js" in requests
            assert any(url.startswith(f"{public}/oauth/calendly/callback?") for url in requests)

        browse(browser, run)
        # And neither did Calendly's deliveries, nor the live stream.
        through = set(proxy.seen)
        assert "GET /calendly/api/live" in through
        assert "GET /calendly/oauth/calendly/callback" in through
        assert any(seen.startswith("POST /calendly/webhooks/calendly/") for seen in through)
