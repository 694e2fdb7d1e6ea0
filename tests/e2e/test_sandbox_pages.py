"""The sandbox's pages in a real browser (Debian's chromium): the consent page and the booking
form behave as a person trying the app expects."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser, Page, Route, expect

CLI = [sys.executable, "-m", "entrypoints.cli", "sandbox", "--port", "0"]
CALLBACK = "http://callback.test/oauth/calendly/callback"
LOCAL_MINUTE = "%Y-%m-%dT%H:%M"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    """`calendly-connect sandbox` on a free port; its URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALENDLY_")}
    proc = subprocess.Popen(
        [*CLI, "--client-id", "browser-client", "--redirect-uri", CALLBACK],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    try:
        assert first.startswith("Calendly sandbox listening on "), first
        yield first.rsplit(" ", 1)[1].strip()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def create_user(sandbox: str, name: str, email: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{sandbox}/_sandbox/users",
        data=json.dumps({"name": name, "email": email}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        user: dict[str, Any] = json.load(response)
        return user


def open_consent(page: Page, sandbox: str) -> list[str]:
    """The consent page; answers the callback URLs the browser is sent to."""
    arrived: list[str] = []

    def callback(route: Route) -> None:
        arrived.append(route.request.url)
        route.fulfill(status=200, content_type="text/html", body="<p>back in the app</p>")

    page.route("http://callback.test/**", callback)
    query = urlencode(
        {
            "client_id": "browser-client",
            "redirect_uri": CALLBACK,
            "response_type": "code",
            "state": "st-1",
        }
    )
    page.goto(f"{sandbox}/oauth/authorize?{query}")
    expect(page.get_by_text("Allow access to your Calendly account?")).to_be_visible()
    return arrived


# ------------------------------------------------------------------- consent
def test_the_new_user_fields_show_only_when_a_new_user_is_picked(page: Page, sandbox: str) -> None:
    create_user(sandbox, "Existing Person", "existing@example.com")
    open_consent(page, sandbox)
    name = page.get_by_label("Name", exact=True)
    email = page.get_by_label("Email", exact=True)
    plan = page.get_by_label("Plan", exact=True)

    # An existing user is picked at first: nothing to fill in for a new one.
    expect(page.locator("input[name=user_id]:checked")).not_to_have_value("new")
    for field in (name, email, plan):
        expect(field).to_be_hidden()
        expect(field).to_be_disabled()

    page.get_by_label("A new Calendly user").check()
    for field in (name, email, plan):
        expect(field).to_be_visible()
        expect(field).to_be_enabled()
    assert name.evaluate("e => e.required")
    assert email.evaluate("e => e.required")

    page.get_by_label("Existing Person").check()
    for field in (name, email, plan):
        expect(field).to_be_hidden()
    assert not name.evaluate("e => e.required")
    assert not email.evaluate("e => e.required")


def test_approving_as_an_existing_user_needs_no_new_user_details(page: Page, sandbox: str) -> None:
    create_user(sandbox, "Picked Person", "picked@example.com")
    arrived = open_consent(page, sandbox)
    page.get_by_label("Picked Person").check()

    page.get_by_role("button", name="Approve").click()

    expect(page.get_by_text("back in the app")).to_be_visible()
    assert "code=" in arrived[0]
    assert "state=st-1" in arrived[0]


def test_a_new_user_is_asked_for_a_name_and_email_before_approving(
    page: Page, sandbox: str
) -> None:
    arrived = open_consent(page, sandbox)
    page.get_by_label("A new Calendly user").check()

    page.get_by_role("button", name="Approve").click()
    # The browser asks for the missing fields: nothing was sent.
    assert page.get_by_label("Name", exact=True).evaluate("e => !e.validity.valid")
    assert arrived == []

    page.get_by_label("Name", exact=True).fill("Nora New")
    page.get_by_label("Email", exact=True).fill("nora@example.com")
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_text("back in the app")).to_be_visible()
    assert "code=" in arrived[0]


def test_a_refused_new_user_comes_back_with_new_picked_and_what_was_typed(
    page: Page, sandbox: str
) -> None:
    create_user(sandbox, "Someone Else", "someone@example.com")
    open_consent(page, sandbox)
    page.get_by_label("A new Calendly user").check()
    # Blank for the sandbox, not for the browser: only spaces.
    page.get_by_label("Name", exact=True).fill("   ")
    page.get_by_label("Email", exact=True).fill("typo@example.com")
    page.get_by_role("button", name="Approve").click()

    expect(page.get_by_role("alert")).to_contain_text("needs a name and a valid email")
    expect(page.get_by_label("A new Calendly user")).to_be_checked()
    expect(page.get_by_label("Email", exact=True)).to_have_value("typo@example.com")
    expect(page.get_by_label("Name", exact=True)).to_be_visible()


# ------------------------------------------------------------------- booking
def book(page: Page, *, start: str, name: str | None = None, email: str | None = None) -> None:
    page.get_by_label("Date and time", exact=True).fill(start)
    if name is not None:
        page.get_by_label("Invitee name").fill(name)
    if email is not None:
        page.get_by_label("Invitee email").fill(email)
    page.get_by_role("button", name="Schedule event").click()
    expect(page.get_by_role("status").first).to_contain_text("Booked", timeout=10_000)


def test_after_a_booking_the_form_is_ready_for_the_next_one_at_a_free_time(
    page: Page, sandbox: str
) -> None:
    user = create_user(sandbox, "Bea Booked", "bea@example.com")
    page.goto(user["scheduling_url"])
    page.get_by_label("Event name").fill("Roadmap chat")
    first = datetime.strptime(
        page.get_by_label("Date and time", exact=True).input_value(), LOCAL_MINUTE
    )

    def at(minutes: int) -> str:
        return (first + timedelta(minutes=minutes)).strftime(LOCAL_MINUTE)

    book(page, start=at(30))  # the prefilled invitee

    status = page.get_by_role("status").first
    expect(status).to_contain_text("Booked “Roadmap chat” with Grace Guest")
    # A new invitee is needed: the last one's details are gone.
    expect(page.get_by_label("Invitee name")).to_have_value("")
    expect(page.get_by_label("Invitee email")).to_have_value("")
    expect(page.get_by_label("Invitee name")).to_be_focused()
    # The time moved on: right after the meeting just booked.
    expect(page.get_by_label("Date and time", exact=True)).to_have_value(at(60))

    # Booked before the first one: the next free time skips the first one.
    book(page, start=at(0), name="Hal Guest", email="hal@example.org")
    expect(status).to_contain_text("Booked “Roadmap chat” with Hal Guest")
    expect(page.get_by_label("Date and time", exact=True)).to_have_value(at(60))
    expect(page.get_by_label("Invitee name")).to_have_value("")

    # Submitting the emptied form books nothing: the browser asks for an invitee.
    page.get_by_role("button", name="Schedule event").click()
    assert page.get_by_label("Invitee name").evaluate("e => !e.validity.valid")
    expect(page.locator("#events .event")).to_have_count(2)
