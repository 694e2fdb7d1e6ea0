"""The JS client (clients/js/calendly-connect.js, loaded from /client/v1/ as the service serves
it) in a real browser (Debian's chromium), against a scripted server: what only a browser shows.

- live(): a stream ended by its token's expiry resumes at once with a fresh token, from the
  last event id (clients/js/test/live.test.js checks the same logic under Node's fetch; this
  is Chromium's streaming fetch and the headers it really sends).
- credentials "same-origin": on the service's own origin the browser sends the service's
  cookies and keeps those it sets (the OAuth binding cookie); to a service on another origin
  it sends none and keeps none.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Route

ORIGIN = "https://app.test"
OTHER = "https://service.other"
CLIENT = Path(__file__).resolve().parents[2] / "clients" / "js" / "calendly-connect.js"

LIVE_PAGE = """<!doctype html><meta charset="utf-8"><script type="module">
import { createCalendlyConnect } from "/client/v1/calendly-connect.js";
window.meetings = [];
window.states = [];
window.refreshes = 0;
let token = "first-token";
const client = createCalendlyConnect({
  url: location.origin,
  getToken: async ({ refresh }) => {
    if (refresh) { window.refreshes += 1; token = "fresh-token"; }
    return token;
  },
});
window.subscription = client.live({
  onMeeting: (meeting) => window.meetings.push(meeting.id),
  onStateChange: (state) => window.states.push(state),
});
</script>"""

STATUS_PAGE = """<!doctype html><meta charset="utf-8"><script type="module">
import { createCalendlyConnect } from "/client/v1/calendly-connect.js";
window.readStatus = async (url) => {
  const client = createCalendlyConnect({ url, getToken: () => "tok" });
  return (await client.status()).status;
};
window.ready = true;
</script>"""


def sse(*events: tuple[str, object, str | None]) -> str:
    lines = []
    for name, data, event_id in events:
        lines.append(f"event: {name}\n")
        if event_id is not None:
            lines.append(f"id: {event_id}\n")
        lines.append(f"data: {json.dumps(data)}\n\n")
    return "".join(lines)


def serve_client(route: Route) -> bool:
    """Answers the page's request for the client; False for any other request."""
    if route.request.url == f"{ORIGIN}/client/v1/calendly-connect.js":
        route.fulfill(status=200, content_type="text/javascript", body=CLIENT.read_bytes())
        return True
    return False


def test_a_stream_ended_by_its_tokens_expiry_resumes_at_once_with_a_fresh_token(
    browser: Browser,
) -> None:
    streams: list[dict[str, str | float]] = []

    def serve(route: Route) -> None:
        request = route.request
        path = request.url.removeprefix(ORIGIN)
        if serve_client(route):
            return
        if path == "/":
            route.fulfill(status=200, content_type="text/html", body=LIVE_PAGE)
        elif path == "/api/live":
            headers = request.headers
            streams.append(
                {
                    "authorization": headers.get("authorization", ""),
                    "last-event-id": headers.get("last-event-id", ""),
                    "at": time.monotonic(),
                }
            )
            # The first stream ends as the service ends one whose token expired.
            n = len(streams)
            body = sse(
                ("ready", {"cursor": 4}, None),
                ("meetings", {"meetings": [{"id": f"m{n}"}]}, str(4 + n)),
                *([("expired", {"reason": "token_expired"}, None)] if n == 1 else []),
            )
            route.fulfill(status=200, content_type="text/event-stream", body=body)
        else:
            route.fulfill(status=404, body="")

    context = browser.new_context()
    try:
        page = context.new_page()
        page.route(f"{ORIGIN}/**", serve)
        page.goto(f"{ORIGIN}/")
        page.wait_for_function("window.meetings && window.meetings.length >= 2", timeout=10_000)
        meetings = page.evaluate("window.meetings")
        states = page.evaluate("window.states")
        refreshes = page.evaluate("window.refreshes")
        page.evaluate("window.subscription.close()")
    finally:
        context.close()

    first, second = streams[:2]
    assert first["authorization"] == "Bearer first-token"
    assert second["authorization"] == "Bearer fresh-token"
    assert second["last-event-id"] == "5"
    assert meetings[:2] == ["m1", "m2"]
    assert refreshes == 1
    # Straight back ("connecting", not "retrying"): no back-off, and no refused attempt with
    # the expired token in between.
    assert states[:3] == ["open", "connecting", "open"]
    assert float(second["at"]) - float(first["at"]) < 0.5


def test_the_services_cookies_go_only_to_its_own_origin(browser: Browser) -> None:
    seen: dict[str, dict[str, Any]] = {}

    def serve(route: Route) -> None:
        request = route.request
        if serve_client(route):
            return
        if request.url == f"{ORIGIN}/":
            route.fulfill(status=200, content_type="text/html", body=STATUS_PAGE)
            return
        origin = ORIGIN if request.url.startswith(ORIGIN) else OTHER
        cors = {
            "Access-Control-Allow-Origin": ORIGIN,
            "Access-Control-Allow-Headers": "authorization, accept",
            "Access-Control-Allow-Methods": "GET",
        }
        if request.method == "OPTIONS":
            route.fulfill(status=204, headers=cors)
            return
        seen[origin] = request.all_headers()
        route.fulfill(
            status=200,
            content_type="application/json",
            headers={
                **cors,
                "Set-Cookie": "from_service=1; Path=/; Secure; HttpOnly; SameSite=Lax",
            },
            body=json.dumps({"status": "active"}),
        )

    context = browser.new_context()
    try:
        context.add_cookies(
            [
                {"name": "binding", "value": "b", "url": ORIGIN, "httpOnly": True},
                {"name": "binding", "value": "b", "url": OTHER, "httpOnly": True},
            ]
        )
        context.route(f"{ORIGIN}/**", serve)
        context.route(f"{OTHER}/**", serve)
        page = context.new_page()
        page.goto(f"{ORIGIN}/")
        page.wait_for_function("window.ready === true")
        assert page.evaluate("url => window.readStatus(url)", ORIGIN) == "active"
        assert page.evaluate("url => window.readStatus(url)", OTHER) == "active"
        kept = {(cookie["domain"], cookie["name"]) for cookie in context.cookies()}
    finally:
        context.close()

    assert seen[ORIGIN]["authorization"] == "Bearer tok"
    assert seen[OTHER]["authorization"] == "Bearer tok"
    assert "binding=b" in seen[ORIGIN].get("cookie", "")
    assert "cookie" not in seen[OTHER]
    assert ("app.test", "from_service") in kept
    assert ("service.other", "from_service") not in kept
