"""The product page (static/app) in a real browser against a scripted API: Playwright routes
answer every request, so no service runs and each test sets exactly what the API says."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import Route

ORIGIN = "https://app.test"
STATIC = Path(__file__).resolve().parents[2] / "entrypoints" / "service" / "http" / "static"
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".html": "text/html",
}
PROBLEM = "urn:calendly-connect:problem:"
FAKE_CALENDLY = f"{ORIGIN}/fake-calendly/authorize"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def connection(**changes: Any) -> dict[str, Any]:
    """A healthy connection as GET /api/calendly/connection answers it."""
    now = datetime.now(UTC)
    value: dict[str, Any] = {
        "status": "active",
        "webhook_status": "active",
        "calendly_user_uri": "https://api.calendly.test/users/u-1",
        "organization_uri": "https://api.calendly.test/organizations/o-1",
        "email": "ada@example.com",
        "name": "Ada Host",
        "token_expires_at": iso(now + timedelta(hours=2)),
        "last_error": None,
        "connected_since": iso(now - timedelta(days=3)),
        "updated_at": iso(now - timedelta(hours=1)),
        "maintenance": None,
    }
    value.update(changes)
    return value


def meeting(meeting_id: str, start: datetime, minutes: int = 30, **changes: Any) -> dict[str, Any]:
    """A meeting as GET /api/meetings answers it."""
    value: dict[str, Any] = {
        "id": meeting_id,
        "name": f"Meeting {meeting_id}",
        "status": "active",
        "start_time": iso(start),
        "end_time": iso(start + timedelta(minutes=minutes)),
        "location": None,
        "cancellation": None,
        "invitees": [],
    }
    value.update(changes)
    return value


def problem(status: int, slug: str, title: str, detail: str) -> dict[str, Any]:
    return {"type": PROBLEM + slug, "title": title, "status": status, "detail": detail}


def sse(*events: tuple[str, object]) -> str:
    # `retry` slows the page's reconnects: a fulfilled route ends the stream at once.
    return "retry: 10000\n\n" + "".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events
    )


@dataclass
class ScriptedApi:
    """What the API answers. `connection` None: the user never connected (404)."""

    connection: dict[str, Any] | None = None
    meetings: list[dict[str, Any]] = field(default_factory=list)
    # POST /api/calendly/reconnect's answer; its connection becomes the current one.
    reconnect: dict[str, Any] | None = None
    # What the fake Calendly window posts back to the page (the OAuth popup's outcome).
    popup_outcome: dict[str, Any] | None = None
    # The page shell's `cc-sandbox-url` meta ("" as the service fills it when there is none).
    sandbox_url: str = ""
    requests: list[str] = field(default_factory=list)

    def shell(self) -> str:
        html = (STATIC / "app" / "index.html").read_text(encoding="utf-8")
        html = html.replace(
            '<meta name="cc-dev-login" content="auto">',
            '<meta name="cc-dev-login" content="enabled">',
        )
        return html.replace(
            '<meta name="cc-sandbox-url" content="">',
            f'<meta name="cc-sandbox-url" content="{self.sandbox_url}">',
        )

    def serve(self, route: Route) -> None:
        request = route.request
        parts = urlsplit(request.url)
        path = parts.path
        self.requests.append(f"{request.method} {path}")
        if path == "/":
            route.fulfill(status=200, content_type="text/html", body=self.shell())
        elif path.startswith("/static/"):
            file = STATIC / path.removeprefix("/static/")
            if not file.is_file():
                route.fulfill(status=404, body="")
                return
            route.fulfill(
                status=200,
                content_type=CONTENT_TYPES.get(file.suffix, "application/octet-stream"),
                body=file.read_bytes(),
            )
        elif path == "/api/dev/login":
            user = json.loads(request.post_data or "{}").get("user_id", "")
            self.json(route, 200, {"access_token": f"token-of-{user}", "token_type": "Bearer"})
        elif path == "/api/live":
            body = sse(("ready", {"cursor": 0}), ("connection", {"connection": self.connection}))
            route.fulfill(status=200, content_type="text/event-stream", body=body)
        elif path == "/api/calendly/connection" and request.method == "GET":
            if self.connection is None:
                no = problem(404, "connection-not-found", "No Calendly connection", "Never.")
                self.json(route, 404, no)
            else:
                self.json(route, 200, self.connection)
        elif path == "/api/calendly/reconnect":
            answer = self.reconnect or {"outcome": "reconnected", "connection": self.connection}
            if answer.get("connection") is not None:
                self.connection = answer["connection"]
            self.json(route, 200, answer)
        elif path == "/api/calendly/connect":
            expires = iso(datetime.now(UTC) + timedelta(minutes=10))
            started = {"authorization_url": FAKE_CALENDLY, "state": "s", "expires_at": expires}
            self.json(route, 201, started)
        elif path == "/fake-calendly/authorize":
            route.fulfill(status=200, content_type="text/html", body=self.fake_calendly())
        elif path == "/api/meetings":
            self.json(route, 200, {"meetings": self.page_of(parts.query), "next_cursor": None})
        else:
            route.fulfill(status=404, body="")

    def page_of(self, query: str) -> list[dict[str, Any]]:
        params = {k: v[0] for k, v in parse_qs(query).items()}

        def at(value: str) -> datetime:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))

        found = sorted(self.meetings, key=lambda m: at(m["start_time"]))
        if "starts_after" in params:
            found = [m for m in found if at(m["start_time"]) >= at(params["starts_after"])]
        if "starts_before" in params:
            found = [m for m in found if at(m["start_time"]) < at(params["starts_before"])]
        return found

    def fake_calendly(self) -> str:
        """The OAuth popup's last page: posts its outcome to the opener, then closes."""
        outcome = {"type": "calendly-connect", **(self.popup_outcome or {})}
        if outcome.get("ok") and outcome.get("connection"):
            self.connection = outcome["connection"]
        return (
            "<!doctype html><title>Calendly</title><script>"
            f"window.opener.postMessage({json.dumps(outcome)}, {json.dumps(ORIGIN)});"
            "window.close();</script>"
        )

    @staticmethod
    def json(route: Route, status: int, body: object) -> None:
        content_type = "application/problem+json" if status >= 400 else "application/json"
        route.fulfill(status=status, content_type=content_type, body=json.dumps(body))
