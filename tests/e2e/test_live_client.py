"""The page's live client (static/app/live.js) in a real browser, against a scripted server:
when a stream ends because its token expired, it resumes at once with a fresh token."""

from __future__ import annotations

import json
import time
from pathlib import Path

from playwright.sync_api import Route, sync_playwright

from tests.support.browser import CHROMIUM_FLAGS, chromium

ORIGIN = "https://app.test"
STATIC = Path(__file__).resolve().parents[2] / "entrypoints" / "service" / "http" / "static" / "app"
PAGE = """<!doctype html><meta charset="utf-8"><script type="module">
import { LiveClient } from "/static/app/live.js";
window.seen = [];
window.renewals = 0;
let token = "first-token";
const client = new LiveClient({
  token: () => token,
  renew: async () => { window.renewals += 1; token = "fresh-token"; return true; },
  onEvent: (type) => window.seen.push(type),
  onState: () => {},
});
client.start();
</script>"""


def sse(*events: tuple[str, object, str | None]) -> str:
    lines = []
    for name, data, event_id in events:
        lines.append(f"event: {name}\n")
        if event_id is not None:
            lines.append(f"id: {event_id}\n")
        lines.append(f"data: {json.dumps(data)}\n\n")
    return "".join(lines)


def test_a_stream_ended_by_its_tokens_expiry_resumes_at_once_with_a_fresh_token() -> None:
    streams: list[dict[str, str | float]] = []

    def serve(route: Route) -> None:
        request = route.request
        path = request.url.removeprefix(ORIGIN)
        if path == "/":
            route.fulfill(status=200, content_type="text/html", body=PAGE)
        elif path.startswith("/static/app/"):
            body = (STATIC / path.removeprefix("/static/app/")).read_text(encoding="utf-8")
            route.fulfill(status=200, content_type="text/javascript", body=body)
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
            body = sse(
                ("ready", {"cursor": 4}, None),
                ("meetings", {"meetings": []}, "5"),
                *([("expired", {"reason": "token_expired"}, None)] if len(streams) == 1 else []),
            )
            route.fulfill(status=200, content_type="text/event-stream", body=body)
        else:
            route.fulfill(status=404, body="")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_page()
            page.route(f"{ORIGIN}/**", serve)
            page.goto(f"{ORIGIN}/")
            page.wait_for_function("window.seen && window.seen.length >= 4", timeout=10_000)
            renewals = page.evaluate("window.renewals")
        finally:
            browser.close()

    first, second = streams[:2]
    assert first["authorization"] == "Bearer first-token"
    assert second["authorization"] == "Bearer fresh-token"
    assert second["last-event-id"] == "5"
    assert renewals == 1
    # Straight back: no back-off, and no refused attempt with the expired token in between.
    assert float(second["at"]) - float(first["at"]) < 0.5
