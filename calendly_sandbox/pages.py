"""The sandbox's HTML: the OAuth consent page and its error page."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from aiohttp import web

from .world import World

# Shows the new user's fields only while "A new Calendly user" is picked (and requires them).
CONSENT_SCRIPT = "/_sandbox/static/consent.js"

STYLE = """
:root { color-scheme: light; --ink:#1a1a2e; --muted:#5b6170; --line:#d9dde5; --brand:#006bff; }
* { box-sizing: border-box; }
body { margin:0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color:var(--ink);
       background:#f4f6fa; }
main { max-width: 30rem; margin: 3rem auto; background:#fff; border:1px solid var(--line);
       border-radius: 12px; padding: 2rem; box-shadow: 0 4px 18px rgba(0,0,0,.06); }
h1 { font-size: 1.35rem; margin: 0 0 .25rem; }
p.lead { color: var(--muted); margin-top: 0; }
.badge { display:inline-block; font-size:.75rem; font-weight:600; letter-spacing:.04em;
         text-transform:uppercase; color:#8a5a00; background:#fff4d6; border-radius:999px;
         padding:.1rem .6rem; margin-bottom:1rem; }
fieldset { border:1px solid var(--line); border-radius:8px; margin:1rem 0; padding:.75rem 1rem; }
legend { font-weight:600; padding: 0 .25rem; }
label { display:block; margin:.35rem 0; }
input[type=text], input[type=email], select { width:100%; padding:.5rem;
       border:1px solid var(--line); border-radius:6px; font:inherit; }
.actions { display:flex; gap:.75rem; justify-content:flex-end; margin-top:1.5rem; }
button { font:inherit; padding:.55rem 1.2rem; border-radius:6px; border:1px solid var(--line);
         background:#fff; cursor:pointer; }
button.primary { background:var(--brand); border-color:var(--brand); color:#fff; font-weight:600; }
button:focus-visible, input:focus-visible { outline: 3px solid #99c2ff; outline-offset: 2px; }
.problem { background:#fde8e8; color:#8a1c1c; padding:.6rem .8rem; border-radius:6px; }
small { color: var(--muted); }
fieldset.new-user { margin: .5rem 0 0; }
/* Without the script too: the new user's fields only while that choice is picked. */
form:has(input[name=user_id][value=new]:not(:checked)) fieldset.new-user {
  display: none; }
"""


def _page(title: str, body: str, script: str | None = None) -> str:
    tag = f"<script src='{escape(script)}' defer></script>" if script else ""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style>{tag}</head>"
        f"<body><main>{body}</main></body></html>"
    )


def error_page(status: int, title: str, message: str) -> web.HTTPException:
    """An HTML error to raise from a browser-facing handler (400 or 404)."""
    body = (
        "<span class='badge'>Calendly sandbox</span>"
        f"<h1>{escape(title)}</h1><p class='lead' role='alert'>{escape(message)}</p>"
    )
    error = web.HTTPNotFound if status == 404 else web.HTTPBadRequest
    return error(text=_page(title, body), content_type="text/html")


def consent_page(
    client_id: str,
    hidden: dict[str, str],
    world: World,
    problem: str | None = None,
    *,
    new_user: Mapping[str, str] | None = None,
) -> web.Response:
    """The consent form. `new_user`: what was typed for a new user that was refused; the form
    comes back with "A new Calendly user" picked and those values kept."""
    users = sorted(world.users.values(), key=lambda u: u.created_at)
    picked = "new" if new_user is not None or not users else users[0].id
    typed = new_user or {}
    hidden_html = "".join(
        f"<input type='hidden' name='{escape(k)}' value='{escape(v)}'>" for k, v in hidden.items()
    )
    choices = "".join(
        "<label><input type='radio' name='user_id' value='{id}'{checked}> {name} "
        "<small>&lt;{email}&gt; · {plan}</small></label>".format(
            id=escape(u.id),
            checked=" checked" if u.id == picked else "",
            name=escape(u.name),
            email=escape(u.email),
            plan=escape(u.plan),
        )
        for u in users
    )
    plans = "".join(
        f"<option value='{value}'{' selected' if typed.get('new_plan') == value else ''}>"
        f"{label}</option>"
        for value, label in (("standard", "Standard (webhooks)"), ("free", "Free (no webhooks)"))
    )
    problem_html = f"<p class='problem' role='alert'>{escape(problem)}</p>" if problem else ""
    body = f"""
<span class="badge">Calendly sandbox</span>
<h1>Allow access to your Calendly account?</h1>
<p class="lead">The application <strong>{escape(client_id)}</strong> wants to read your user
profile and scheduled events and manage webhook subscriptions.</p>
{problem_html}
<form method="post" action="/oauth/authorize">
{hidden_html}
<fieldset>
<legend>Sign in as</legend>
{choices}
<label><input type="radio" name="user_id" value="new" aria-controls="new-user-fields"
{" checked" if picked == "new" else ""}> A new Calendly user</label>
<fieldset class="new-user" id="new-user-fields">
<legend>The new user</legend>
<label for="new_name">Name</label>
<input type="text" id="new_name" name="new_name" autocomplete="name" placeholder="Ada Host"
 value="{escape(typed.get("new_name", ""))}">
<label for="new_email">Email</label>
<input type="email" id="new_email" name="new_email" autocomplete="email"
 placeholder="ada@example.com" value="{escape(typed.get("new_email", ""))}">
<label for="new_plan">Plan</label>
<select id="new_plan" name="new_plan">{plans}</select>
</fieldset>
</fieldset>
<div class="actions">
<button type="submit" name="decision" value="deny">Deny</button>
<button type="submit" name="decision" value="approve" class="primary">Approve</button>
</div>
</form>"""
    return web.Response(
        text=_page("Authorize application · Calendly sandbox", body, CONSENT_SCRIPT),
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )
