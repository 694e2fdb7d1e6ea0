"""The sandbox's browser UI over real HTTP: the users index, booking pages, JSON and script."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from calendly_sandbox.world import LOCATION_TYPES
from tests.support.sandbox import SandboxDriver

START = "2030-03-05T14:30:00.000000Z"
LATER = "2030-03-07T09:00:00.000000Z"
HOSTILE = "<script>alert(1)</script>"


# ------------------------------------------------------------------ helpers
@dataclass
class Script:
    attrs: dict[str, str]
    text: str = ""


@dataclass
class Page:
    """What a browser would find in a page: links, scripts, form controls by id."""

    links: list[str] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)
    forms: set[str] = field(default_factory=set)
    controls: dict[str, dict[str, str]] = field(default_factory=dict)
    labels_for: set[str] = field(default_factory=set)
    options: dict[str, list[str]] = field(default_factory=dict)

    def data(self) -> Any:
        block = next(s for s in self.scripts if s.attrs.get("type") == "application/json")
        return json.loads(block.text)


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self.script: Script | None = None
        self.select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "a" and "href" in a:
            self.page.links.append(a["href"])
        elif tag == "script":
            self.script = Script(a)
            self.page.scripts.append(self.script)
        elif tag == "form" and "id" in a:
            self.page.forms.add(a["id"])
        elif tag in ("input", "select") and "id" in a:
            self.page.controls[a["id"]] = {"tag": tag, **a}
            if tag == "select":
                self.select = a["id"]
                self.page.options[a["id"]] = []
        elif tag == "option" and self.select is not None:
            self.page.options[self.select].append(a.get("value", ""))
        elif tag == "label" and "for" in a:
            self.page.labels_for.add(a["for"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.script = None
        elif tag == "select":
            self.select = None

    def handle_data(self, data: str) -> None:
        if self.script is not None:
            self.script.text += data


def parse(html: str) -> Page:
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return parser.page


async def get_html(sandbox: SandboxDriver, path: str) -> tuple[int, str, dict[str, str]]:
    url = path if path.startswith("http") else f"{sandbox.url}{path}"
    async with sandbox.http.get(url) as response:
        return response.status, await response.text(), dict(response.headers)


async def host_events(sandbox: SandboxDriver, user_id: str) -> dict[str, Any]:
    data: dict[str, Any] = await sandbox.control(
        "GET", f"/_sandbox/users/{user_id}/events", expect=200
    )
    return data


def assert_no_inline_script_code(page: Page) -> None:
    for script in page.scripts:
        if script.attrs.get("type") == "application/json":
            continue
        assert "src" in script.attrs, script
        assert not script.text.strip(), script


# ------------------------------------------------------------------- index
async def test_index_lists_users_with_their_plans_and_booking_links(
    sandbox: SandboxDriver,
) -> None:
    ada = await sandbox.create_user("Ada Host", "ada@example.com")
    bob = await sandbox.create_user("Bob Free", "bob@example.com", plan="free")

    status, html, headers = await get_html(sandbox, "/_sandbox/")

    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    page = parse(html)
    for user in (ada, bob):
        assert user["name"] in html
        assert user["email"] in html
        assert f"/_sandbox/book/{user['slug']}" in page.links
    assert page.controls[f"plan-standard-{ada['id']}"].get("checked") == ""
    assert "checked" not in page.controls[f"plan-free-{ada['id']}"]
    assert page.controls[f"plan-free-{bob['id']}"].get("checked") == ""
    assert "new-user" in page.forms
    for control in ("nu-name", "nu-email", "nu-plan"):
        assert control in page.labels_for
    assert any(s.attrs.get("src") == "/_sandbox/static/sandbox.js" for s in page.scripts)
    assert_no_inline_script_code(page)


async def test_index_without_users_says_how_to_get_one(sandbox: SandboxDriver) -> None:
    status, html, _ = await get_html(sandbox, "/_sandbox/")

    assert status == 200
    assert "No users yet" in html


async def test_plan_change_shows_on_the_index(sandbox: SandboxDriver) -> None:
    ada = await sandbox.create_user("Ada Host", "ada@example.com")
    await sandbox.control("PATCH", f"/_sandbox/users/{ada['id']}", {"plan": "free"}, expect=200)

    _, html, _ = await get_html(sandbox, "/_sandbox/")

    assert parse(html).controls[f"plan-free-{ada['id']}"].get("checked") == ""


# ------------------------------------------------------------ booking page
async def test_booking_page_has_the_form_and_the_script(sandbox: SandboxDriver) -> None:
    ada = await sandbox.create_user("Ada Host", "ada@example.com")

    status, html, headers = await get_html(sandbox, ada["scheduling_url"])

    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Cache-Control"] == "no-store"
    page = parse(html)
    assert "book-form" in page.forms
    fields = {
        "bk-name": "text",
        "bk-email": "email",
        "bk-start": "datetime-local",
        "bk-duration": "number",
        "bk-event": "text",
        "bk-seats": "number",
    }
    for control_id, kind in fields.items():
        assert page.controls[control_id]["type"] == kind
        assert control_id in page.labels_for
    assert "bk-location" in page.labels_for
    assert sorted(page.options["bk-location"]) == sorted(LOCATION_TYPES)
    assert any(s.attrs.get("src") == "/_sandbox/static/sandbox.js" for s in page.scripts)
    assert_no_inline_script_code(page)
    assert 'role="status"' in html or "role='status'" in html
    assert 'id="deliveries"' in html
    data = page.data()
    assert data["page"] == "book"
    assert data["user"]["id"] == ada["id"]
    assert data["user"]["uri"] == ada["uri"]
    assert data["events"]["events"] == []


async def test_booking_page_carries_the_hosts_events(sandbox: SandboxDriver) -> None:
    ada = await sandbox.create_user("Ada Host", "ada@example.com")
    booked = await sandbox.book(ada["id"])

    _, html, _ = await get_html(sandbox, ada["scheduling_url"])

    events = parse(html).data()["events"]["events"]
    assert [e["id"] for e in events] == [last_segment(booked["event"]["uri"])]


async def test_user_data_is_escaped_everywhere(sandbox: SandboxDriver) -> None:
    user = await sandbox.create_user(HOSTILE, "mallory@example.com")
    await sandbox.book(
        user["id"],
        event_name=HOSTILE,
        invitees=[{"name": HOSTILE, "email": "eve@example.com"}],
    )

    for path in ("/_sandbox/", user["scheduling_url"]):
        status, html, _ = await get_html(sandbox, path)
        assert status == 200
        assert HOSTILE not in html
        assert "alert(1)</script>" not in html
        page = parse(html)
        assert_no_inline_script_code(page)
        scripts = [s.attrs for s in page.scripts]
        assert scripts == [
            {"src": "/_sandbox/static/sandbox.js", "defer": ""},
            {"type": "application/json", "id": "sandbox-data"},
        ]
    _, html, _ = await get_html(sandbox, user["scheduling_url"])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    data = parse(html).data()
    assert data["user"]["name"] == HOSTILE
    event = data["events"]["events"][0]
    assert event["name"] == HOSTILE
    assert event["invitees"][0]["name"] == HOSTILE


async def test_unknown_booking_page_is_the_sandbox_404(sandbox: SandboxDriver) -> None:
    await sandbox.create_user("Ada Host", "ada@example.com")

    status, html, headers = await get_html(sandbox, "/_sandbox/book/nobody-here")

    assert status == 404
    assert headers["Content-Type"].startswith("text/html")
    assert "Calendly sandbox" in html


async def test_a_users_booking_page_is_found_by_the_id_in_their_user_uri(
    sandbox: SandboxDriver,
) -> None:
    user = await sandbox.create_user("Ada Host", "ada@example.com")
    uuid = user["uri"].rstrip("/").rsplit("/", 1)[-1]

    async with sandbox.http.get(
        f"{sandbox.url}/_sandbox/users/{uuid}/book", allow_redirects=False
    ) as response:
        assert response.status == 302
        assert f"{sandbox.url}{response.headers['Location']}" == user["scheduling_url"]
    status, _, _ = await get_html(sandbox, "/_sandbox/users/no-such-user/book")
    assert status == 404


async def test_the_consent_script_is_served_as_javascript(sandbox: SandboxDriver) -> None:
    async with sandbox.http.get(f"{sandbox.url}/_sandbox/static/consent.js") as response:
        assert response.status == 200
        assert response.content_type == "text/javascript"
        assert "new_name" in await response.text()


# ------------------------------------------------------------- JSON reads
def last_segment(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


async def test_events_endpoint_lists_the_hosts_events_with_invitees(
    sandbox: SandboxDriver,
) -> None:
    ada = await sandbox.create_user("Ada Host", "ada@example.com")
    bob = await sandbox.create_user("Bob Other", "bob@example.com")
    first = await sandbox.book(ada["id"])
    group = await sandbox.book(
        ada["id"],
        start_time=LATER,
        event_name="Team sync",
        invitee_limit=3,
        invitees=[
            {"name": "Alan Guest", "email": "alan@example.org"},
            {"name": "Kay Guest", "email": "kay@example.org"},
        ],
    )
    await sandbox.book(bob["id"])
    alan, kay = group["invitees"]
    await sandbox.control(
        "POST",
        f"/_sandbox/invitees/{last_segment(alan['uri'])}/cancel",
        {"canceler_type": "host"},
        expect=201,
    )
    await sandbox.control(
        "POST", f"/_sandbox/invitees/{last_segment(kay['uri'])}/no_show", {}, expect=201
    )

    data = await host_events(sandbox, ada["id"])

    assert "now" in data
    events = data["events"]
    # Most recently booked first; Bob's meeting is not Ada's.
    assert [e["uri"] for e in events] == [group["event"]["uri"], first["event"]["uri"]]
    newest, oldest = events
    assert newest["id"] == last_segment(group["event"]["uri"])
    assert newest["name"] == "Team sync"
    assert newest["start_time"] == "2030-03-07T09:00:00.000000Z"
    assert newest["invitees_counter"] == {"total": 2, "active": 1, "limit": 3}
    by_name = {i["name"]: i for i in newest["invitees"]}
    assert by_name["Alan Guest"]["id"] == last_segment(alan["uri"])
    assert by_name["Alan Guest"]["status"] == "canceled"
    assert by_name["Alan Guest"]["cancellation"]["canceler_type"] == "host"
    assert by_name["Kay Guest"]["status"] == "active"
    assert by_name["Kay Guest"]["no_show"] is not None
    assert [i["email"] for i in oldest["invitees"]] == ["grace@example.org"]
    assert oldest["invitees"][0]["uri"] == first["invitees"][0]["uri"]


async def test_events_endpoint_follows_a_reschedule(sandbox: SandboxDriver) -> None:
    ada = await sandbox.create_user("Ada Host", "ada@example.com")
    booked = await sandbox.book(ada["id"])
    invitee_id = last_segment(booked["invitees"][0]["uri"])
    moved = await sandbox.control(
        "POST",
        f"/_sandbox/invitees/{invitee_id}/reschedule",
        {"start_time": LATER, "order": "created_first"},
        expect=201,
    )

    events = (await host_events(sandbox, ada["id"]))["events"]

    assert [e["uri"] for e in events] == [moved["event"]["uri"], booked["event"]["uri"]]
    new, old = events
    assert old["status"] == "canceled"
    assert old["invitees"][0]["rescheduled"] is True
    assert old["invitees"][0]["new_invitee"] == new["invitees"][0]["uri"]
    assert new["invitees"][0]["old_invitee"] == old["invitees"][0]["uri"]


async def test_events_endpoint_is_empty_for_a_new_user(sandbox: SandboxDriver) -> None:
    ada = await sandbox.create_user("Ada Host", "ada@example.com")

    assert (await host_events(sandbox, ada["id"]))["events"] == []


async def test_events_endpoint_answers_404_for_unknown_users(sandbox: SandboxDriver) -> None:
    body = await sandbox.control(
        "GET", "/_sandbox/users/00000000-0000-4000-8000-000000000000/events", expect=404
    )

    assert body["title"] == "Resource Not Found"


# ------------------------------------------------------------------ script
async def test_the_script_is_served_as_javascript(sandbox: SandboxDriver) -> None:
    async with sandbox.http.get(f"{sandbox.url}/_sandbox/static/sandbox.js") as response:
        body = await response.text()
        assert response.status == 200
        assert response.content_type == "text/javascript"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "fetch(" in body


async def test_only_known_static_files_are_served(sandbox: SandboxDriver) -> None:
    for name in ("nope.js", "..%2Fui.py", "%2E%2E%2Fapp.py"):
        async with sandbox.http.get(f"{sandbox.url}/_sandbox/static/{name}") as response:
            assert response.status == 404, name


async def test_every_path_the_script_calls_is_a_sandbox_route(sandbox: SandboxDriver) -> None:
    async with sandbox.http.get(f"{sandbox.url}/_sandbox/static/sandbox.js") as response:
        script = await response.text()
    routes = (await sandbox.control("GET", "/_sandbox/routes", expect=200))["routes"]
    known = {re.sub(r"\{[^}]*\}", "{}", r.split(" ", 1)[1]) for r in routes}

    paths = set(re.findall(r"[`\"](/_sandbox/[^`\"]*)[`\"]", script))
    shapes = {re.sub(r"\$\{[^}]*\}", "{}", p) for p in paths}

    assert len(shapes) >= 10
    assert shapes <= known, shapes - known
