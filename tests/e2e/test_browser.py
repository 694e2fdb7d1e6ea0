"""A real browser (Debian's chromium, driven by Playwright) through the main job with 2
service processes: sign in, connect in the popup, book in the sandbox, see it live, disconnect.
The product page does all of it through the JS client the service serves (/client/v1/)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.browser import approve_as_a_new_calendly_user, book_in_the_sandbox

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    """`make run` with WORKERS=2 in a throwaway data folder on free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALENDLY_", "DATABASE_"))}
    env["LOG_LEVEL"] = "WARNING"
    # Outside pytest's temporary tree (see tests/conftest.py, pg_cluster).
    data = Path(tempfile.mkdtemp(prefix="calendly-browser-"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "entrypoints.cli",
            "dev",
            "--workers",
            "2",
            "--port",
            "0",
            "--sandbox-port",
            "0",
            "--data-dir",
            str(data),
        ],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    fields: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not fields:
        line = proc.stdout.readline().decode()
        if not line:
            break
        if line.startswith("READY "):
            fields = dict(part.split("=", 1) for part in line.split()[1:])
    try:
        assert fields, "the stack did not start"
        yield fields
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data, ignore_errors=True)


def test_connect_in_the_popup_and_see_a_booking_arrive_live(
    stack: dict[str, str], browser: Browser
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    # Chrome logs every failed request and every uncaught error: a new user's whole
    # journey (connect, book, disconnect) must not leave one in the console.
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    try:
        run_through(page, stack["url"], stack["sandbox"])
    finally:
        context.close()

    assert errors == []
    # The page loads the client the service serves, and its calls go through it.
    assert f"{stack['url']}/client/v1/calendly-connect.js" in requests
    # On the service's own site the client keeps the OAuth binding cookie (credentials
    # "same-origin"): the popup's callback finished connecting by itself, no hand-off.
    assert f"{stack['url']}/api/calendly/connect" in requests
    assert f"{stack['url']}/api/calendly/connect/complete" not in requests


def run_through(page: Page, url: str, sandbox: str) -> None:
    page.goto(url)
    page.get_by_label("Sign in as someone else").fill("alice")
    page.get_by_role("button", name="Sign in", exact=True).last.click()
    expect(page.get_by_text("Signed in as")).to_be_visible()

    page.goto(f"{url}/#/settings/calendar")
    with page.expect_popup() as popup_info:
        page.get_by_role("button", name="Connect with Calendly").click()
    approve_as_a_new_calendly_user(popup_info.value, name="Ada Host", email="ada@example.com")
    expect(page.get_by_text("Calendly connected")).to_be_visible(timeout=10_000)
    expect(page.get_by_text("ada@example.com").first).to_be_visible()

    page.goto(f"{url}/#/meetings")
    expect(page.get_by_text("Live", exact=True)).to_be_visible(timeout=10_000)
    book_in_the_sandbox(
        page.context,
        sandbox,
        host="Ada Host",
        invitee="Grace Guest",
        email="grace@example.org",
        event="Roadmap chat",
    )

    # No reload: the meeting appears on the open page through the live stream.
    expect(page.get_by_text("Roadmap chat").first).to_be_visible(timeout=5_000)
    expect(page.get_by_text("Grace Guest").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "meetings-live.png"), full_page=True)
    page.goto(f"{url}/#/settings/calendar")
    expect(page.get_by_text("Connected", exact=True).first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "settings-calendar.png"), full_page=True)

    page.get_by_role("button", name="Disconnect").click()
    page.get_by_role("dialog").get_by_role("button", name="Disconnect").click()
    expect(page.get_by_text("Calendly disconnected")).to_be_visible(timeout=10_000)
    expect(page.get_by_role("button", name="Connect with Calendly")).to_be_visible()
    # Meeting history stays.
    page.get_by_role("link", name="Meetings").click()
    expect(page.get_by_text("Roadmap chat").first).to_be_visible()


def test_a_new_users_page_loads_without_a_single_console_error(
    stack: dict[str, str], browser: Browser
) -> None:
    """Chrome logs every failed request: a page that asks for a connection the user never
    made (404) shows an error to every new user who opens the console."""
    url = stack["url"]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))

        page.goto(url)
        page.get_by_label("Sign in as someone else").fill("erin-never-connected")
        page.get_by_role("button", name="Sign in", exact=True).last.click()
        expect(page.get_by_role("button", name="Connect with Calendly")).to_be_visible()
        expect(page.get_by_text("Live", exact=True)).to_be_visible(timeout=10_000)

        page.goto(f"{url}/#/meetings")
        expect(page.get_by_text("Connect Calendly to see your meetings")).to_be_visible()
        # A page load with the session already there (a reload), on each route.
        page.reload()
        expect(page.get_by_text("Connect Calendly to see your meetings")).to_be_visible()
        page.goto(f"{url}/#/settings/calendar")
        page.reload()
        expect(page.get_by_role("button", name="Connect with Calendly")).to_be_visible()
        expect(page.get_by_text("Live", exact=True)).to_be_visible(timeout=10_000)
    finally:
        context.close()

    assert errors == []
