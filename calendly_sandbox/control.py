"""The simulation and inspection API under `/_sandbox/` (documented in README.md)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal, TypeVar

import msgspec
from aiohttp import web

from .config import OAuthClient, PayloadStyle, Settings
from .delivery import ReleaseOrder
from .errors import ApiError, json_response
from .limits import Fault
from .model import CancelerType, Plan, Role, parse_iso
from .state import SANDBOX, Sandbox
from .world import LOCATION_TYPES, Notification

routes = web.RouteTableDef()
S = TypeVar("S")


async def decode(request: web.Request, kind: type[S]) -> S:
    raw = await request.read()
    try:
        return msgspec.json.decode(raw or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"Invalid request body: {exc}") from None
    except msgspec.DecodeError:
        raise ApiError(400, "The request body is not valid JSON.") from None


def sandbox_of(request: web.Request) -> Sandbox:
    return request.app[SANDBOX]


def time_arg(value: str, name: str) -> float:
    try:
        return parse_iso(value)
    except ValueError:
        raise ApiError(400, f"{name} must be an ISO 8601 time with a time zone") from None


async def dispatch(
    sandbox: Sandbox, notes: list[Any], wait: bool, extra: dict[str, Any]
) -> web.Response:
    """Start the deliveries for `notes`; with `wait`, answer after their first attempts."""
    first_id = len(sandbox.deliverer.log)
    task = sandbox.deliverer.enqueue(notes)
    if wait and task is not None:
        await asyncio.wait_for(asyncio.shield(task), timeout=60)
    deliveries = [d.to_json() for d in sandbox.deliverer.log[first_id:]]
    for d in deliveries:
        del d["body"]
    return json_response({**extra, "deliveries": deliveries}, status=201)


# ---------------------------------------------------------------- setup
@routes.post("/_sandbox/clients")
async def register_client(request: web.Request) -> web.StreamResponse:
    """Register an OAuth application (client id, secret, redirect URIs, app signing key)."""
    client = await decode(request, OAuthClient)
    sandbox_of(request).world.clients[client.client_id] = client
    return json_response({"client_id": client.client_id}, status=201)


class NewOrganization(msgspec.Struct, forbid_unknown_fields=True):
    name: str


@routes.post("/_sandbox/organizations")
async def create_organization(request: web.Request) -> web.StreamResponse:
    body = await decode(request, NewOrganization)
    world = sandbox_of(request).world
    org = world.create_organization(body.name)
    return json_response({"id": org.id, "uri": world.org_uri(org.id), "name": org.name}, 201)


class NewUser(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    email: str
    plan: Plan = "standard"
    organization: str | None = None
    role: Role | None = None
    timezone: str = "Europe/Berlin"
    id: str | None = None


def user_summary(sandbox: Sandbox, user_id: str) -> dict[str, Any]:
    world = sandbox.world
    user = world.users[user_id]
    return {
        **world.user_json(user),
        "id": user.id,
        "plan": user.plan,
        "role": user.role,
        "payload_style": user.payload_style or world.settings.payload_style,
    }


@routes.post("/_sandbox/users")
async def create_user(request: web.Request) -> web.StreamResponse:
    """Create a Calendly user (in a new single-user organization unless one is named)."""
    body = await decode(request, NewUser)
    sandbox = sandbox_of(request)
    org_id = body.organization
    if org_id is not None and org_id.startswith("http"):
        org_id = org_id.rstrip("/").rsplit("/", 1)[-1]
    user = sandbox.world.create_user(
        name=body.name,
        email=body.email,
        plan=body.plan,
        organization_id=org_id,
        role=body.role,
        timezone=body.timezone,
        user_id=body.id,
    )
    return json_response(user_summary(sandbox, user.id), status=201)


@routes.get("/_sandbox/users")
async def list_users(request: web.Request) -> web.StreamResponse:
    sandbox = sandbox_of(request)
    return json_response({"users": [user_summary(sandbox, u) for u in sandbox.world.users]})


class UserChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    plan: Plan | None = None
    role: Role | None = None
    # The shape of this user's deliveries ("current" or "legacy"), whatever the world's.
    payload_style: PayloadStyle | None = None


@routes.patch("/_sandbox/users/{uuid}")
async def change_user(request: web.Request) -> web.StreamResponse:
    """Change a user's plan (free <-> standard), role, or the shape of their deliveries."""
    sandbox = sandbox_of(request)
    user = sandbox.world.get_user(request.match_info["uuid"])
    body = await decode(request, UserChange)
    sandbox.world.change_user(
        user, plan=body.plan, role=body.role, payload_style=body.payload_style
    )
    return json_response(user_summary(sandbox, user.id))


@routes.post("/_sandbox/users/{uuid}/expire_tokens")
async def expire_tokens(request: web.Request) -> web.StreamResponse:
    """Every access token of this user expires now (refresh tokens keep working)."""
    world = sandbox_of(request).world
    user = world.get_user(request.match_info["uuid"])
    return json_response({"expired": world.expire_access_tokens(user.id)})


@routes.post("/_sandbox/users/{uuid}/revoke_app")
async def revoke_app(request: web.Request) -> web.StreamResponse:
    """The user removed the app in Calendly: all their access and refresh tokens are revoked."""
    world = sandbox_of(request).world
    user = world.get_user(request.match_info["uuid"])
    return json_response({"revoked": world.revoke_all(user.id)})


@routes.get("/_sandbox/settings")
async def get_settings(request: web.Request) -> web.StreamResponse:
    return json_response(msgspec.to_builtins(sandbox_of(request).world.settings))


@routes.patch("/_sandbox/settings")
async def change_settings(request: web.Request) -> web.StreamResponse:
    """Change any of the settings (token lifetimes, limits, delivery timing, uniqueness...)."""
    sandbox = sandbox_of(request)
    raw = await request.read()
    try:
        patch = msgspec.json.decode(raw or b"{}")
        if not isinstance(patch, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        merged = {**msgspec.to_builtins(sandbox.world.settings), **patch}
        sandbox.world.settings = msgspec.convert(merged, Settings)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"Invalid settings: {exc}") from None
    except msgspec.DecodeError:
        raise ApiError(400, "The request body is not valid JSON.") from None
    return json_response(msgspec.to_builtins(sandbox.world.settings))


class Advance(msgspec.Struct, forbid_unknown_fields=True):
    seconds: float


@routes.post("/_sandbox/clock/advance")
async def advance_clock(request: web.Request) -> web.StreamResponse:
    """Move the sandbox's clock forward (codes and tokens expire; windows reset)."""
    body = await decode(request, Advance)
    if body.seconds < 0:
        raise ApiError(400, "seconds must not be negative")
    world = sandbox_of(request).world
    world.clock.advance(body.seconds)
    return json_response({"offset": world.clock.offset})


# ------------------------------------------------------------- bookings
class InviteeIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    email: str
    timezone: str = "America/New_York"


class Booking(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    start_time: str
    invitees: list[InviteeIn]
    duration_minutes: int = 30
    event_name: str = "30 Minute Meeting"
    location_type: str = "zoom"
    # Several invitees, or a limit above one, make a group event.
    invitee_limit: int = 1
    questions_and_answers: list[dict[str, Any]] | None = None
    wait: bool = False


@routes.post("/_sandbox/users/{uuid}/bookings")
async def book(request: web.Request) -> web.StreamResponse:
    """Book a meeting with this user as host: one `invitee.created` per invitee."""
    sandbox = sandbox_of(request)
    world = sandbox.world
    host = world.get_user(request.match_info["uuid"])
    body = await decode(request, Booking)
    if not 1 <= body.duration_minutes <= 24 * 60:
        raise ApiError(400, "duration_minutes must be between 1 and 1440")
    if body.location_type not in LOCATION_TYPES:
        raise ApiError(400, f"location_type must be one of {sorted(LOCATION_TYPES)}")
    event, notes = world.book(
        host,
        invitees=[(i.name, i.email) for i in body.invitees],
        start_time=time_arg(body.start_time, "start_time"),
        duration_minutes=body.duration_minutes,
        name=body.event_name,
        location_type=body.location_type,
        invitee_limit=body.invitee_limit,
        questions_and_answers=body.questions_and_answers,
    )
    return await dispatch(
        sandbox,
        notes,
        body.wait,
        {
            "event": world.event_json(event),
            "invitees": [world.invitee_json(world.invitees[n.invitee_id]) for n in notes],
        },
    )


class AddInvitee(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    email: str
    timezone: str = "America/New_York"
    wait: bool = False


@routes.post("/_sandbox/events/{uuid}/invitees")
async def add_invitee(request: web.Request) -> web.StreamResponse:
    """Add one more invitee to a group event."""
    sandbox = sandbox_of(request)
    world = sandbox.world
    event = world.get_event(request.match_info["uuid"])
    body = await decode(request, AddInvitee)
    note = world.add_invitee(event, body.name, body.email, body.timezone)
    return await dispatch(
        sandbox, [note], body.wait, {"invitee": world.invitee_json(world.invitees[note.invitee_id])}
    )


class Cancel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    canceler_type: CancelerType = "invitee"
    reason: str | None = None
    wait: bool = False


@routes.post("/_sandbox/invitees/{uuid}/cancel")
async def cancel_invitee(request: web.Request) -> web.StreamResponse:
    """Cancel one invitee's booking, by the host or by the invitee."""
    sandbox = sandbox_of(request)
    world = sandbox.world
    invitee = world.get_invitee(request.match_info["uuid"])
    body = await decode(request, Cancel)
    note = world.cancel_invitee(invitee, body.canceler_type, body.reason)
    return await dispatch(sandbox, [note], body.wait, {"invitee": world.invitee_json(invitee)})


@routes.post("/_sandbox/events/{uuid}/cancel")
async def cancel_event(request: web.Request) -> web.StreamResponse:
    """The host cancels the whole event: every active invitee is canceled."""
    sandbox = sandbox_of(request)
    world = sandbox.world
    event = world.get_event(request.match_info["uuid"])
    body = await decode(request, Cancel)
    notes = world.cancel_event(event, body.reason)
    return await dispatch(sandbox, notes, body.wait, {"event": world.event_json(event)})


class Reschedule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    start_time: str
    duration_minutes: int | None = None
    # Calendly sends the pair in no guaranteed order; the caller picks one.
    order: Literal["canceled_first", "created_first"] = "canceled_first"
    wait: bool = False


@routes.post("/_sandbox/invitees/{uuid}/reschedule")
async def reschedule(request: web.Request) -> web.StreamResponse:
    """Move an invitee to a new time: `invitee.canceled` (old) and `invitee.created` (new)."""
    sandbox = sandbox_of(request)
    world = sandbox.world
    invitee = world.get_invitee(request.match_info["uuid"])
    body = await decode(request, Reschedule)
    canceled, created = world.reschedule(
        invitee, time_arg(body.start_time, "start_time"), body.duration_minutes
    )
    notes: list[Notification] = (
        [canceled, created] if body.order == "canceled_first" else [created, canceled]
    )
    new = world.invitees[created.invitee_id]
    return await dispatch(
        sandbox,
        notes,
        body.wait,
        {
            "old_invitee": world.invitee_json(invitee),
            "new_invitee": world.invitee_json(new),
            "event": world.event_json(world.events[new.event_id]),
        },
    )


class Wait(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    wait: bool = False


@routes.post("/_sandbox/invitees/{uuid}/no_show")
async def mark_no_show(request: web.Request) -> web.StreamResponse:
    """Mark the invitee as a no-show: `invitee_no_show.created`."""
    sandbox = sandbox_of(request)
    world = sandbox.world
    invitee = world.get_invitee(request.match_info["uuid"])
    body = await decode(request, Wait)
    note = world.mark_no_show(invitee)
    return await dispatch(sandbox, [note], body.wait, {"invitee": world.invitee_json(invitee)})


@routes.delete("/_sandbox/invitees/{uuid}/no_show")
async def unmark_no_show(request: web.Request) -> web.StreamResponse:
    """Undo a no-show: `invitee_no_show.deleted`."""
    sandbox = sandbox_of(request)
    world = sandbox.world
    invitee = world.get_invitee(request.match_info["uuid"])
    body = await decode(request, Wait)
    note, removed = world.unmark_no_show(invitee)
    return await dispatch(
        sandbox, [(note, removed)], body.wait, {"invitee": world.invitee_json(invitee)}
    )


# ------------------------------------------------------------ deliveries
@routes.get("/_sandbox/deliveries")
async def list_deliveries(request: web.Request) -> web.StreamResponse:
    """The log of webhook deliveries with every attempt's outcome (`?subscription=` filters)."""
    sandbox = sandbox_of(request)
    sub = request.query.get("subscription")
    log = [d for d in sandbox.deliverer.log if sub is None or d.subscription_id == sub]
    return json_response({"deliveries": [d.to_json() for d in log]})


class Release(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    order: ReleaseOrder = "fifo"
    seed: int | None = None
    wait: bool = False


@routes.post("/_sandbox/deliveries/release")
async def release(request: web.Request) -> web.StreamResponse:
    """Send the held deliveries (see the `hold_deliveries` setting) in the order asked for."""
    sandbox = sandbox_of(request)
    body = await decode(request, Release)
    count = len(sandbox.deliverer.held)
    task = sandbox.deliverer.release(body.order, body.seed)
    if body.wait and task is not None:
        await asyncio.wait_for(asyncio.shield(task), timeout=60)
    return json_response({"released": count})


@routes.post("/_sandbox/deliveries/{id}/redeliver")
async def redeliver(request: web.Request) -> web.StreamResponse:
    """Send a logged delivery again, freshly signed (what a Calendly retry looks like)."""
    sandbox = sandbox_of(request)
    try:
        wanted = int(request.match_info["id"])
    except ValueError:
        raise ApiError(404) from None
    found = next((d for d in sandbox.deliverer.log if d.id == wanted), None)
    if found is None:
        raise ApiError(404)
    body = await decode(request, Wait)
    task = sandbox.deliverer.redeliver(found)
    if body.wait:
        await asyncio.wait_for(asyncio.shield(task), timeout=60)
    return json_response(sandbox.deliverer.log[-1].to_json(), status=201)


class Idle(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    timeout: float = 10.0


@routes.post("/_sandbox/deliveries/wait")
async def wait_idle(request: web.Request) -> web.StreamResponse:
    """Answer once no first delivery attempt is in flight (or after `timeout` seconds)."""
    body = await decode(request, Idle)
    idle = await sandbox_of(request).deliverer.wait_idle(min(body.timeout, 60.0))
    return json_response({"idle": idle})


@routes.post("/_sandbox/subscriptions/{uuid}/disable")
async def disable_subscription(request: web.Request) -> web.StreamResponse:
    """Disable a subscription at once, as 24 hours of failed deliveries would."""
    world = sandbox_of(request).world
    sub = world.subscriptions.get(request.match_info["uuid"])
    if sub is None:
        raise ApiError(404)
    world.disable_subscription(sub)
    return json_response(world.subscription_json(sub))


@routes.get("/_sandbox/subscriptions")
async def all_subscriptions(request: web.Request) -> web.StreamResponse:
    """Every subscription, with whether it has its own signing key (never the key itself)."""
    world = sandbox_of(request).world
    return json_response(
        {
            "subscriptions": [
                {**world.subscription_json(s), "has_signing_key": s.signing_key is not None}
                for s in world.subscriptions.values()
            ]
        }
    )


# -------------------------------------------------------- faults & calls
@routes.post("/_sandbox/faults")
async def add_fault(request: web.Request) -> web.StreamResponse:
    """Make the next `count` calls of a route fail, hang or reset (see `Fault`)."""
    fault = await decode(request, Fault)
    if fault.status is None and not fault.reset_connection and fault.latency_ms <= 0:
        raise ApiError(400, "A fault needs a status, reset_connection or latency_ms")
    if fault.status is not None and not 100 <= fault.status <= 599:
        raise ApiError(400, "status must be an HTTP status code")
    if fault.count < 1:
        raise ApiError(400, "count must be at least 1")
    added = sandbox_of(request).faults.add(fault)
    return json_response(msgspec.to_builtins(added), status=201)


@routes.delete("/_sandbox/faults")
async def clear_faults(request: web.Request) -> web.StreamResponse:
    sandbox_of(request).faults.faults.clear()
    return web.Response(status=204)


@routes.get("/_sandbox/calls")
async def list_calls(request: web.Request) -> web.StreamResponse:
    """The log of API and OAuth calls (`?route=POST /oauth/token` filters, `?user=<uri>` too)."""
    sandbox = sandbox_of(request)
    route = request.query.get("route")
    user = request.query.get("user")
    calls = [c.to_json(sandbox.world) for c in sandbox.calls]
    calls = [c for c in calls if (route is None or c["route"] == route)]
    calls = [c for c in calls if (user is None or c["user"] == user)]
    return json_response({"calls": calls})


@routes.delete("/_sandbox/calls")
async def clear_calls(request: web.Request) -> web.StreamResponse:
    sandbox_of(request).calls.clear()
    return web.Response(status=204)


@routes.get("/_sandbox/routes")
async def list_routes(request: web.Request) -> web.StreamResponse:
    """The route names that faults and the call log use."""
    names = sorted(
        {
            f"{r.method} {r.resource.canonical}"
            for r in request.app.router.routes()
            if r.resource is not None and r.method != "HEAD"
        }
    )
    return json_response({"routes": names})
