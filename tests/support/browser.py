"""Debian's chromium for Playwright: where it is, and the flags it runs with in containers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    # Not a skip: `make test` installs chromium (apt); without it a browser test must fail loudly.
    assert found, "Debian's chromium is needed: apt-get install chromium (make test does)"
    return found


@contextmanager
def launched_chromium() -> Iterator[Browser]:
    """Debian's chromium, headless, closed when the block ends."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield browser
        finally:
            browser.close()


def approve_as_a_new_calendly_user(popup: Page, *, name: str, email: str) -> None:
    """On the sandbox's consent page in the popup: create a Calendly user, approve, and wait
    for the popup to close itself."""
    popup.wait_for_load_state()
    expect(popup.get_by_text("Allow access to your Calendly account?")).to_be_visible()
    popup.get_by_label("A new Calendly user").check()
    popup.get_by_label("Name").fill(name)
    popup.get_by_label("Email").fill(email)
    # Listen before clicking: the popup may close faster than a later wait could start.
    with popup.expect_event("close", timeout=15_000):
        popup.get_by_role("button", name="Approve").click()


def book_in_the_sandbox(
    context: BrowserContext, sandbox: str, *, host: str, invitee: str, email: str, event: str
) -> None:
    """Book a meeting with `host` on the sandbox's booking page, and wait until it is
    delivered to the service."""
    booking = context.new_page()
    booking.goto(f"{sandbox}/_sandbox/")
    booking.get_by_role("link", name=host).first.click()
    booking.get_by_label("Invitee name").fill(invitee)
    booking.get_by_label("Invitee email").fill(email)
    booking.get_by_label("Event name").fill(event)
    booking.get_by_role("button", name="Schedule event").click()
    expect(booking.get_by_role("status").first).to_contain_text("delivered", timeout=10_000)
    booking.close()
