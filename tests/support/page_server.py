"""The product page (static/app) in a real browser against a scripted API: Playwright routes
answer every request, so no service runs and each test sets exactly what the API says."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import Route

from entrypoints.service.http.routes.pages import render_index

ORIGIN = "https://app.test"
REPOSITORY = Path(__file__).resolve().parents[2]
STATIC = REPOSITORY / "entrypoints" / "service" / "http" / "static"
# The JS client, as the service serves it at /client/v1/ (the page imports it from there).
CLIENT = REPOSITORY / "clients" / "js"
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".html": "text/html",
}
PROBLEM = "urn:calendly-connect:problem:"
FAKE_CALENDLY = f"{ORIGIN}/fake-calendly/authorize"
# The `state` of every authorization this API starts.
STATE = "state-1"


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
        "synced_at": iso(now - timedelta(minutes=5)),
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
        "details": "complete",
        "details_error": None,
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


def authorization_required(connection: dict[str, Any] | None) -> dict[str, Any]:
    """POST /api/calendly/reconnect's answer when Calendly needs the user's approval again."""
    return {
        "outcome": "authorization_required",
        "authorization_url": FAKE_CALENDLY,
        "state": STATE,
        "expires_at": iso(datetime.now(UTC) + timedelta(minutes=10)),
        "connection": connection,
    }


@dataclass
class ScriptedApi:
    """What the API answers. `connection` None: the user never connected (404)."""

    connection: dict[str, Any] | None = None
    meetings: list[dict[str, Any]] = field(default_factory=list)
    # POST /api/calendly/reconnect's answer; its connection becomes the current one.
    reconnect: dict[str, Any] | None = None
    # What the fake Calendly window posts back to the page (the OAuth popup's outcome):
    # {ok, connection} (the service completed it), {ok, stage: "authorized", code} (a hand-off
    # the page completes) or {ok: false, error}. `type` and `state` are added.
    popup_outcome: dict[str, Any] | None = None
    # POST /api/calendly/connect/complete's answer (status, body); None: connected as
    # `completed_connection`.
    complete: tuple[int, dict[str, Any]] | None = None
    completed_connection: dict[str, Any] = field(default_factory=lambda: connection())
    # The page shell's `cc-sandbox-url` meta ("" as the service fills it when there is none).
    sandbox_url: str = ""
    # The service's ROOT_PATH: everything it serves is under it ("" at the root).
    base_path: str = ""
    # "METHOD /path" of every request, the path as the browser asked for it.
    requests: list[str] = field(default_factory=list)
    # How many of the next GET /api/meetings with a cursor (a "Load more") answer 503.
    failing_next_pages: int = 0
    # Meetings the live stream announces as changed (as a webhook's effect would be).
    live_meetings: list[dict[str, Any]] = field(default_factory=list)
    # The JSON bodies the page sent, by "METHOD /path".
    bodies: dict[str, list[Any]] = field(default_factory=dict)

    def shell(self) -> str:
        """The page as the service renders it (dev login on, its prefix, the sandbox)."""
        return render_index(
            dev_login_enabled=True,
            root_path=self.base_path,
            sandbox_url=self.sandbox_url or None,
        )

    def serve(self, route: Route) -> None:
        request = route.request
        parts = urlsplit(request.url)
        self.requests.append(f"{request.method} {parts.path}")
        path = parts.path
        if path.startswith("/fake-calendly/"):
            pass  # Calendly: not under the service's prefix
        elif self.base_path:
            if path != self.base_path and not path.startswith(self.base_path + "/"):
                route.fulfill(status=404, body="")
                return
            path = path.removeprefix(self.base_path) or "/"
        key = f"{request.method} {path}"
        if request.post_data:
            with contextlib.suppress(ValueError):
                self.bodies.setdefault(key, []).append(json.loads(request.post_data))
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
        elif path.startswith("/client/v1/"):
            file = CLIENT / path.removeprefix("/client/v1/")
            if file.name not in ("calendly-connect.js", "calendly-connect.d.ts"):
                route.fulfill(status=404, body="")
                return
            route.fulfill(status=200, content_type="text/javascript", body=file.read_bytes())
        elif path == "/api/dev/login":
            user = json.loads(request.post_data or "{}").get("user_id", "")
            self.json(route, 200, {"access_token": f"token-of-{user}", "token_type": "Bearer"})
        elif path == "/api/live":
            events: list[tuple[str, object]] = [
                ("ready", {"cursor": 0}),
                ("connection", {"connection": self.connection}),
            ]
            if self.live_meetings:
                events.append(("meetings", {"meetings": self.live_meetings}))
            body = sse(*events)
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
            started = {"authorization_url": FAKE_CALENDLY, "state": STATE, "expires_at": expires}
            self.json(route, 200, started)
        elif path == "/api/calendly/connect/complete":
            status, completed = self.complete or (
                200,
                {"connection": self.completed_connection, "switched_account": False},
            )
            if status == 200:
                self.connection = completed["connection"]
            self.json(route, status, completed)
        elif path == "/api/calendly/connection" and request.method == "DELETE":
            was = self.connection
            self.connection = (
                None
                if was is None
                else {**was, "status": "disconnected", "webhook_status": "missing"}
            )
            result = {
                "connection": self.connection,
                "subscription_deleted": True,
                "revoke_failed": False,
                "already_disconnected": was is None or was["status"] == "disconnected",
            }
            self.json(route, 200, result)
        elif path == "/fake-calendly/authorize":
            route.fulfill(status=200, content_type="text/html", body=self.fake_calendly())
        elif path == "/api/meetings":
            params = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if "cursor" in params and self.failing_next_pages > 0:
                self.failing_next_pages -= 1
                down = problem(503, "storage-unavailable", "Service temporarily unavailable", "")
                self.json(route, 503, down)
                return
            found, next_cursor = self.page_of(params)
            self.json(route, 200, {"meetings": found, "next_cursor": next_cursor})
        else:
            route.fulfill(status=404, body="")

    def page_of(self, params: dict[str, str]) -> tuple[list[dict[str, Any]], str | None]:
        """One page of GET /api/meetings (the cursor is an offset here) and the next cursor."""

        def at(value: str) -> datetime:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))

        found = sorted(self.meetings, key=lambda m: at(m["start_time"]))
        if "starts_after" in params:
            found = [m for m in found if at(m["start_time"]) >= at(params["starts_after"])]
        if "starts_before" in params:
            found = [m for m in found if at(m["start_time"]) < at(params["starts_before"])]
        offset = int(params.get("cursor", "0"))
        limit = int(params.get("limit", "100"))
        page = found[offset : offset + limit]
        more = offset + limit < len(found)
        return page, str(offset + limit) if more else None

    def fake_calendly(self) -> str:
        """The OAuth popup's last page: posts its outcome to the opener, then closes."""
        outcome = {"type": "calendly-connect", "state": STATE, **(self.popup_outcome or {})}
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
