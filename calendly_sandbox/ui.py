"""The sandbox's browser UI: an index of users and each user's booking page.

The HTML is rendered here (everything user-provided is escaped); the behaviour lives in
`static/sandbox.js`, which talks to the control API. Pages carry no inline script code: the data
the script needs travels in a `<script type="application/json">` block, and a Content-Security-
Policy only allows scripts from the sandbox itself.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
from aiohttp import web

from .control import sandbox_of, user_summary
from .errors import json_response
from .model import Plan, ScheduledEvent, Subscription, User, iso
from .pages import STYLE, error_page
from .world import LOCATION_TYPES, World

routes = web.RouteTableDef()

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"sandbox.js": "text/javascript", "consent.js": "text/javascript"}
CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

LOCATION_LABELS = {
    "zoom": "Zoom",
    "google_conference": "Google Meet",
    "microsoft_teams_conference": "Microsoft Teams",
    "webex": "Webex",
    "gotomeeting": "GoTo Meeting",
    "physical": "In person",
    "outbound_call": "Phone call (host calls)",
    "inbound_call": "Phone call (invitee calls)",
    "custom": "Custom location",
    "ask_invitee": "Ask the invitee",
}
PLAN_LABELS: dict[Plan, str] = {
    "free": "Free",
    "standard": "Standard",
    "teams": "Teams",
    "enterprise": "Enterprise",
}

ICONS = {
    "clock": '<circle cx="12" cy="12" r="9"/><path d="M12 7v5l3 2"/>',
    "place": '<path d="M12 21s-7-6.2-7-11a7 7 0 0 1 14 0c0 4.8-7 11-7 11z"/>'
    '<circle cx="12" cy="10" r="2.5"/>',
    "globe": '<circle cx="12" cy="12" r="9"/><path d="M3 12h18M12 3a14 14 0 0 1 0 18'
    'M12 3a14 14 0 0 0 0 18"/>',
    "seats": '<circle cx="9" cy="8" r="3"/><path d="M3 20a6 6 0 0 1 12 0M16 5a3 3 0 0 1 0 6'
    'M21 20a6 6 0 0 0-3.5-5.5"/>',
    "bolt": '<path d="M13 3 5 14h6l-1 7 8-11h-6z"/>',
}

UI_STYLE = """
body.ui { padding-bottom: 6rem; }
body.ui main { max-width: 68rem; margin: 0 auto; padding: 1.75rem 1rem 2rem; background: none;
       border: 0; border-radius: 0; box-shadow: none; }
a { color: #0052c2; }
h2 { font-size: 1.15rem; margin: 0 0 .75rem; }
h3 { font-size: .8rem; text-transform: uppercase; letter-spacing: .06em; color: var(--muted);
     margin: 1.25rem 0 .25rem; }
.sr-only { position: absolute; width: 1px; height: 1px; padding: 0; margin: -1px;
           overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; border: 0; }
.skip { position: absolute; left: -999px; top: .5rem; background: #fff; padding: .5rem 1rem;
        border-radius: 6px; z-index: 10; }
.skip:focus { left: .5rem; }
a:focus-visible, select:focus-visible, summary:focus-visible, [tabindex]:focus-visible,
button:focus-visible, input:focus-visible { outline: 3px solid #5c9dff; outline-offset: 2px; }
.topbar { display: flex; align-items: center; justify-content: space-between; gap: 1rem;
          flex-wrap: wrap; padding: .7rem 1.25rem; background: #fff;
          border-bottom: 1px solid var(--line); }
.brand { display: flex; align-items: center; gap: .55rem; font-weight: 700; color: var(--ink);
         text-decoration: none; font-size: 1.05rem; }
.logo { width: 1.5rem; height: 1.5rem; border-radius: 50%; border: .4rem solid var(--brand); }
.brand .badge { margin: 0; }
.topbar nav { display: flex; gap: 1.25rem; font-size: .95rem; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 12px; padding: 1.5rem;
        margin: 0 0 1.5rem; box-shadow: 0 4px 18px rgba(16,35,63,.06); }
.muted { color: var(--muted); }
.lead { font-size: 1.05rem; }
.booking { display: grid; grid-template-columns: minmax(15rem, 1fr) 2fr; padding: 0;
           overflow: hidden; }
.host-panel { padding: 1.75rem; border-right: 1px solid var(--line); }
.host-panel h1 { font-size: 1.6rem; line-height: 1.25; margin: .2rem 0 1rem;
                 overflow-wrap: anywhere; }
.host-name { color: var(--muted); font-weight: 600; margin: .9rem 0 0; overflow-wrap: anywhere; }
.avatar { width: 3.25rem; height: 3.25rem; border-radius: 50%; background: #e6f0ff;
          color: #0047b3; display: grid; place-items: center; font-weight: 700;
          font-size: 1.15rem; flex: none; }
.facts { list-style: none; padding: 0; margin: 0 0 1rem; color: var(--muted); }
.facts li { display: flex; gap: .6rem; align-items: center; margin: .55rem 0; font-weight: 600; }
.icon { width: 1.25rem; height: 1.25rem; flex: none; fill: none; stroke: currentColor;
        stroke-width: 2; stroke-linecap: round; stroke-linejoin: round; }
.note { font-size: .9rem; background: #f4f6fa; border-radius: 8px; padding: .65rem .8rem;
        margin: .5rem 0 0; }
.note.warn { background: #fff4d6; color: #6b4500; }
.note .icon { width: 1.05rem; height: 1.05rem; vertical-align: -.2em; margin-right: .25rem;
              color: var(--brand); }
.form-end { display: flex; flex-direction: column; justify-content: flex-end; }
.form-end button { align-self: flex-start; }
.plan-label { font-size: .85rem; color: var(--muted); font-weight: 600; }
.topbar nav a { text-decoration: none; font-weight: 600; }
.topbar nav a:hover { text-decoration: underline; }
.book-form { padding: 1.75rem; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 1rem 1.1rem; }
.field { display: flex; flex-direction: column; gap: .3rem; min-width: 0; }
.field.full { grid-column: 1 / -1; }
.field label, .field .label { margin: 0; font-weight: 600; font-size: .9rem; }
.hint { font-size: .8rem; color: var(--muted); }
input[type=number], input[type=datetime-local] { width: 100%; padding: .5rem;
       border: 1px solid #b8bfcc; border-radius: 6px; font: inherit; background: #fff; }
input[type=text], input[type=email], select { border-color: #b8bfcc; background: #fff; }
.book-form .actions { justify-content: flex-start; align-items: center; }
button { color: var(--ink); font-weight: 500; }
button:hover { background: #f4f6fa; }
button.primary:hover { background: #0057d1; }
button:disabled, button[aria-disabled=true] { opacity: .6; cursor: progress; }
button.small, details.inline > summary { padding: .3rem .75rem; font-size: .875rem; }
button.danger { color: #b42318; border-color: #f0b8b2; }
button.danger:hover { background: #fef3f2; }
.status { position: fixed; left: 50%; bottom: 1rem; transform: translateX(-50%); z-index: 5;
          width: min(46rem, calc(100% - 2rem)); margin: 0; padding: .8rem 1.1rem;
          border-radius: 10px; background: #10233f; color: #fff;
          box-shadow: 0 8px 28px rgba(16,35,63,.3); }
.status:empty { padding: 0; box-shadow: none; background: transparent; }
.status.error { background: #8a1c1c; }
.status.pending { background: #3b4a63; }
.status.warn { background: #6b4500; }
.events { list-style: none; margin: 0; padding: 0; }
.event { display: grid; grid-template-columns: 13rem 1fr; gap: 1.25rem; padding: 1.1rem 0;
         border-top: 1px solid var(--line); }
.event:first-child { border-top: 0; }
.when { display: flex; gap: .6rem; align-items: flex-start; }
.dot { width: .8rem; height: .8rem; border-radius: 50%; background: #8247f5; margin-top: .35rem;
       flex: none; }
.event.canceled .dot { background: #a3a9b5; }
.when .date { font-weight: 600; display: block; }
.when .time { color: var(--muted); display: block; white-space: nowrap; }
.event-head { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem; }
.event-head h4 { margin: 0; font-size: 1.05rem; overflow-wrap: anywhere; }
.event.canceled .event-head h4 { color: var(--muted); text-decoration: line-through; }
.meta { font-size: .875rem; color: var(--muted); margin: .15rem 0 .5rem; }
.pill { display: inline-block; font-size: .75rem; font-weight: 600; border-radius: 999px;
        padding: .05rem .55rem; background: #eef1f6; color: #394150; white-space: nowrap; }
.pill.red { background: #fde8e8; color: #8a1c1c; }
.pill.green { background: #e3f6ea; color: #14632f; }
.pill.amber { background: #fff4d6; color: #6b4500; }
.pill.blue { background: #e6f0ff; color: #0047b3; }
.invitees { list-style: none; margin: 0; padding: 0; }
.invitee { border: 1px solid var(--line); border-radius: 8px; padding: .7rem .85rem;
           margin: .5rem 0; }
.invitee-head { display: flex; flex-wrap: wrap; align-items: baseline; gap: .35rem .6rem; }
.invitee-head strong { overflow-wrap: anywhere; }
.invitee-head .email { color: var(--muted); font-size: .9rem; overflow-wrap: anywhere; }
.toolbar { display: flex; flex-wrap: wrap; gap: .5rem; margin-top: .6rem; align-items: center; }
details.inline > summary { display: inline-block; cursor: pointer; list-style: none;
        border: 1px solid var(--line); border-radius: 6px; background: #fff; }
details.inline > summary::-webkit-details-marker { display: none; }
details.inline[open] { flex-basis: 100%; }
details.inline[open] > summary { background: #e6f0ff; border-color: #99c2ff; }
.inline-form { display: flex; flex-wrap: wrap; gap: .75rem; align-items: flex-end;
               margin-top: .6rem; padding: .75rem; background: #f8f9fc; border-radius: 8px; }
.inline-form .field { flex: 1 1 12rem; }
.inline-form button { flex: none; }
.empty { color: var(--muted); padding: 1rem 0 .25rem; margin: 0; }
details.card > summary { cursor: pointer; font-weight: 600; font-size: 1.1rem; }
details.card > summary .count { margin-left: .35rem; }
.log-tools { display: flex; justify-content: space-between; align-items: center; gap: 1rem;
             flex-wrap: wrap; margin: 1rem 0 .5rem; }
.subs { margin: .25rem 0 0; padding-left: 1.2rem; font-size: .9rem; }
.subs code, table.log code { overflow-wrap: anywhere; font-size: .85em; }
.table-wrap { overflow-x: auto; }
table.log { width: 100%; border-collapse: collapse; font-size: .875rem; }
table.log caption { text-align: left; color: var(--muted); padding-bottom: .4rem; }
table.log th, table.log td { text-align: left; padding: .45rem .5rem; vertical-align: top;
        border-bottom: 1px solid var(--line); }
table.log th { color: var(--muted); font-weight: 600; white-space: nowrap; }
table.log .nowrap, table.log td > code:first-child { white-space: nowrap; }
table.log .error-cell { min-width: 16rem; overflow-wrap: anywhere; }
.intro h1 { font-size: 1.8rem; margin: .5rem 0 .5rem; }
.intro p { max-width: 44rem; }
.users { list-style: none; margin: 0; padding: 0; }
.user-row { display: flex; align-items: center; gap: 1rem; padding: 1rem 0; flex-wrap: wrap;
            border-top: 1px solid var(--line); }
.user-row:first-child { border-top: 0; }
.who { flex: 1 1 14rem; min-width: 0; }
.who a { font-weight: 600; font-size: 1.05rem; overflow-wrap: anywhere; }
.who .email { color: var(--muted); font-size: .9rem; display: block; overflow-wrap: anywhere; }
fieldset.plan { border: 0; margin: 0; padding: 0; display: flex; align-items: center; gap: .5rem; }
.segmented { display: inline-flex; border: 1px solid #b8bfcc; border-radius: 999px;
             padding: 2px; background: #fff; }
.segmented input { position: absolute; opacity: 0; width: 1px; height: 1px; }
.segmented label { margin: 0; padding: .2rem .8rem; border-radius: 999px; cursor: pointer;
                   font-size: .875rem; font-weight: 600; color: var(--muted); }
.segmented input:checked + label { background: var(--brand); color: #fff; }
.segmented input:focus-visible + label { outline: 3px solid #5c9dff; outline-offset: 1px; }
.book-link { font-weight: 600; white-space: nowrap; }
@media (max-width: 52rem) {
  .booking { grid-template-columns: 1fr; }
  .host-panel { border-right: 0; border-bottom: 1px solid var(--line); }
}
@media (max-width: 40rem) {
  .grid { grid-template-columns: 1fr; }
  .event { grid-template-columns: 1fr; gap: .4rem; }
  .card, .host-panel, .book-form { padding: 1.1rem; }
  .topbar nav { gap: .9rem; }
}
"""


# --------------------------------------------------------------- helpers
def icon(name: str) -> str:
    return f'<svg class="icon" viewBox="0 0 24 24" aria-hidden="true">{ICONS[name]}</svg>'


def initials(name: str) -> str:
    letters = [part[0] for part in name.split() if part[:1].isalnum()]
    return "".join(letters[:2]).upper() or "?"


def json_block(element_id: str, data: Any) -> str:
    """Data for the script, safe inside HTML: no `<`, `>` or `&` can end the block early."""
    text = msgspec.json.encode(data).decode("utf-8")
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{escape(element_id)}">{text}</script>'


def location_keys() -> list[str]:
    """The world's location types, the familiar ones first."""
    known = [k for k in LOCATION_LABELS if k in LOCATION_TYPES]
    return known + sorted(k for k in LOCATION_TYPES if k not in LOCATION_LABELS)


def user_by_slug(world: World, slug: str) -> User | None:
    return next((u for u in world.users.values() if u.slug == slug), None)


def hearing(world: World, user: User) -> list[Subscription]:
    """The subscriptions that hear about this user's meetings (any state)."""
    return [
        s
        for s in world.subscriptions.values()
        if (s.scope == "user" and s.user_id == user.id)
        or (s.scope == "organization" and s.organization_id == user.organization_id)
    ]


def event_view(world: World, event: ScheduledEvent) -> dict[str, Any]:
    return {
        **world.event_json(event),
        "id": event.id,
        "invitees": [{**world.invitee_json(world.invitees[i]), "id": i} for i in event.invitee_ids],
    }


def host_events(world: World, user: User) -> dict[str, Any]:
    """The host's scheduled events with their invitees, most recently booked first."""
    # Events are only ever added, so insertion order is booking order.
    events = [e for e in world.events.values() if e.host_id == user.id]
    return {
        "now": iso(world.clock.now()),
        "events": [event_view(world, e) for e in reversed(events)],
    }


def page(title: str, body: str, *, page_name: str, data: Any) -> web.Response:
    html = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><link rel='icon' href='data:,'>"
        f"<style>{STYLE}{UI_STYLE}</style>"
        "<script src='/_sandbox/static/sandbox.js' defer></script></head>"
        f"<body class='ui' data-page='{escape(page_name)}'>"
        "<a class='skip' href='#content'>Skip to content</a>"
        "<header class='topbar'><a class='brand' href='/_sandbox/'>"
        "<span class='logo' aria-hidden='true'></span>Calendly "
        "<span class='badge'>Sandbox</span></a>"
        "<nav aria-label='Sandbox'><a href='/_sandbox/'>Users</a>"
        "<a href='/_sandbox/routes'>Control API</a></nav></header>"
        f"<main id='content' tabindex='-1'>{body}"
        "<noscript><p class='note warn'>These pages need JavaScript to book and change "
        "meetings.</p></noscript>"
        "<p id='status' class='status' role='status' aria-live='polite'></p></main>"
        f"{json_block('sandbox-data', data)}</body></html>"
    )
    return web.Response(
        text=html,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP},
    )


def subscription_note(world: World, user: User) -> str:
    subs = hearing(world, user)
    active = [s for s in subs if s.state == "active"]
    if user.plan == "free" and not active:
        return (
            "<p class='note warn'>Free plan: Calendly refuses webhook subscriptions for free "
            "accounts, so no app hears of bookings here as they happen. A connected app sees "
            "them when it reads the API: calendly-connect polls, every 30 seconds while its "
            "user has the page open and every 30 minutes otherwise. Switch the plan on the "
            "<a href='/_sandbox/'>users page</a> for webhooks.</p>"
        )
    if not active:
        return (
            "<p class='note'>No webhook subscription hears about these meetings yet. Connect "
            "this user to your app: it hears of what happens from then on, and reads what was "
            "booked before when it first syncs (calendly-connect reads the last 30 days and "
            "everything ahead).</p>"
        )
    count = len(active)
    return (
        f"<p class='note'>{icon('bolt')} Each change is sent to {count} webhook "
        f"subscription{'s' if count != 1 else ''}.</p>"
    )


# ------------------------------------------------------------------ index
def user_row(world: World, user: User) -> str:
    uid = escape(user.id)
    name = escape(user.name)
    active = sum(1 for s in hearing(world, user) if s.state == "active")
    subs = f"{active} webhook subscription{'s' if active != 1 else ''}"
    paid = user.plan != "free"
    plan_note = (
        f" <span class='pill'>{escape(PLAN_LABELS[user.plan])}</span>"
        if user.plan not in ("free", "standard")
        else ""
    )
    return (
        f"<li class='user-row' id='user-{uid}'>"
        f"<span class='avatar' aria-hidden='true'>{escape(initials(user.name))}</span>"
        f"<div class='who'><a href='/_sandbox/book/{escape(user.slug)}'>{name}</a>"
        f"<span class='email'>{escape(user.email)} · {subs}</span></div>"
        f"<fieldset class='plan' data-user='{uid}' data-name='{name}'>"
        f"<legend class='sr-only'>Plan of {name}</legend>"
        "<span class='plan-label' aria-hidden='true'>Plan</span><span class='segmented'>"
        f"<input type='radio' id='plan-free-{uid}' name='plan-{uid}' value='free'"
        f"{'' if paid else ' checked'}><label for='plan-free-{uid}'>Free</label>"
        f"<input type='radio' id='plan-standard-{uid}' name='plan-{uid}' value='standard'"
        f"{' checked' if paid else ''}><label for='plan-standard-{uid}'>Standard</label>"
        f"</span>{plan_note}</fieldset>"
        f"<a class='book-link' href='/_sandbox/book/{escape(user.slug)}'>"
        f"Booking page<span class='sr-only'> of {name}</span> →</a></li>"
    )


def users_list(world: World) -> str:
    users = sorted(world.users.values(), key=lambda u: u.created_at)
    if not users:
        return (
            "<p class='empty'>No users yet. Create one below, or connect from your app: the "
            "sandbox's consent page can create one too.</p>"
        )
    return f"<ul class='users'>{''.join(user_row(world, u) for u in users)}</ul>"


@routes.get("/_sandbox/")
async def index(request: web.Request) -> web.StreamResponse:
    """The list of sandbox users, their plans, links to their booking pages."""
    world = sandbox_of(request).world
    body = f"""
<section class="intro" aria-labelledby="intro-title">
<h1 id="intro-title">Calendly sandbox</h1>
<p class="lead muted">A stand-in for Calendly that runs on your machine. Connect a sandbox user
to your app through the OAuth consent page, then book, cancel and reschedule that user's
meetings here: the sandbox sends your app the same signed webhooks Calendly would, and shows
what your app answered.</p>
</section>
<section class="card" aria-labelledby="users-title">
<h2 id="users-title">Users</h2>
<div id="users">{users_list(world)}</div>
</section>
<section class="card" aria-labelledby="new-user-title">
<h2 id="new-user-title">Create a user</h2>
<form id="new-user" class="grid">
<div class="field"><label for="nu-name">Name</label>
<input type="text" id="nu-name" name="name" required autocomplete="off" placeholder="Ada Host">
</div>
<div class="field"><label for="nu-email">Email</label>
<input type="email" id="nu-email" name="email" required autocomplete="off"
 placeholder="ada@example.com"></div>
<div class="field"><label for="nu-plan">Plan</label>
<select id="nu-plan" name="plan"><option value="standard">Standard (webhooks)</option>
<option value="free">Free (no webhooks)</option></select></div>
<div class="form-end"><button type="submit" class="primary">Create user</button></div>
</form>
</section>"""
    return page(
        "Users · Calendly sandbox",
        body,
        page_name="index",
        data={"page": "index"},
    )


# ---------------------------------------------------------- booking page
@routes.get("/_sandbox/book/{slug}")
async def booking_page(request: web.Request) -> web.StreamResponse:
    """A user's scheduling page: book a meeting, act on their meetings, see the deliveries."""
    sandbox = sandbox_of(request)
    world = sandbox.world
    user = user_by_slug(world, request.match_info["slug"])
    if user is None:
        raise error_page(404, "Page not found", "No sandbox user has this booking page.")
    name = escape(user.name)
    location_options = "".join(
        f"<option value='{escape(key)}'>{escape(LOCATION_LABELS.get(key, key))}</option>"
        for key in location_keys()
    )
    body = f"""
<section class="card booking" aria-labelledby="event-title">
<div class="host-panel">
<span class="avatar" aria-hidden="true">{escape(initials(user.name))}</span>
<p class="host-name">{name}</p>
<h1 id="event-title">30 Minute Meeting</h1>
<ul class="facts">
<li>{icon("clock")}<span id="fact-duration">30 min</span></li>
<li>{icon("place")}<span id="fact-location">Zoom</span></li>
<li>{icon("seats")}<span id="fact-seats">One-on-one</span></li>
<li>{icon("globe")}<span id="fact-zone">Your time zone</span></li>
</ul>
<p class="muted">{escape(user.email)} · <span class="pill blue">{escape(PLAN_LABELS[user.plan])}
plan</span></p>
{subscription_note(world, user)}
</div>
<form id="book-form" class="book-form">
<h2>Enter details</h2>
<div class="grid">
<div class="field"><label for="bk-name">Invitee name</label>
<input type="text" id="bk-name" name="name" required autocomplete="off"
 value="Grace Guest"></div>
<div class="field"><label for="bk-email">Invitee email</label>
<input type="email" id="bk-email" name="email" required autocomplete="off"
 value="grace@example.org"></div>
<div class="field"><label for="bk-start">Date and time</label>
<input type="datetime-local" id="bk-start" name="start" required aria-describedby="bk-start-hint">
<span class="hint" id="bk-start-hint">In your browser's time zone.</span></div>
<div class="field"><label for="bk-duration">Duration (minutes)</label>
<input type="number" id="bk-duration" name="duration" min="1" max="1440" step="1" value="30"
 required></div>
<div class="field full"><label for="bk-event">Event name</label>
<input type="text" id="bk-event" name="event_name" required value="30 Minute Meeting"></div>
<div class="field"><label for="bk-location">Location</label>
<select id="bk-location" name="location_type">{location_options}</select></div>
<div class="field"><label for="bk-seats">Seats</label>
<input type="number" id="bk-seats" name="seats" min="1" max="1000" step="1" value="1" required
 aria-describedby="bk-seats-hint">
<span class="hint" id="bk-seats-hint">1 is a one-on-one meeting; more makes a group
event.</span></div>
</div>
<div class="actions"><button type="submit" class="primary">Schedule event</button></div>
</form>
</section>
<section class="card" aria-labelledby="events-title">
<h2 id="events-title" tabindex="-1">Scheduled events of {name}</h2>
<p class="muted" id="events-zone">Times are shown in your browser's time zone.</p>
<div id="events"><p class="empty">Loading…</p></div>
</section>
<details class="card" id="deliveries">
<summary>Webhook deliveries <span class="pill count" id="delivery-count">…</span></summary>
<div class="log-tools"><div id="subscriptions"></div>
<button type="button" class="small" id="refresh-log">Refresh</button></div>
<div id="delivery-log"><p class="empty">Loading…</p></div>
</details>"""
    data = {
        "page": "book",
        "user": user_summary(sandbox, user.id),
        "location_labels": LOCATION_LABELS,
        "events": host_events(world, user),
    }
    return page(f"{user.name} · Calendly sandbox", body, page_name="book", data=data)


@routes.get("/_sandbox/users/{uuid}/book")
async def booking_page_of(request: web.Request) -> web.StreamResponse:
    """The booking page of the user a Calendly user URI names (`.../users/{uuid}`): a redirect,
    so an app that knows only the URI can link a user's booking page."""
    world = sandbox_of(request).world
    user = world.users.get(request.match_info["uuid"])
    if user is None:
        raise error_page(404, "Page not found", "No sandbox user has this id.")
    raise web.HTTPFound(f"/_sandbox/book/{quote(user.slug, safe='')}")


# ------------------------------------------------------------- JSON reads
@routes.get("/_sandbox/users/{uuid}/events")
async def list_host_events(request: web.Request) -> web.StreamResponse:
    """The user's scheduled events as host, with invitees, most recently booked first."""
    world = sandbox_of(request).world
    user = world.get_user(request.match_info["uuid"])
    return json_response(host_events(world, user))


# ----------------------------------------------------------------- static
@routes.get("/_sandbox/static/{name}")
async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return web.Response(
        body=(STATIC_DIR / name).read_bytes(),
        content_type=content_type,
        charset="utf-8",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )
