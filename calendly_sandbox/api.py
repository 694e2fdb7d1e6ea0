"""Calendly's REST API: users, webhook subscriptions, scheduled events and invitees."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from .errors import NO_PERMISSION_MESSAGE, ApiError, invalid_argument, json_response
from .limits import paginate
from .model import User, parse_iso
from .state import SANDBOX
from .world import World

routes = web.RouteTableDef()
CALLER = web.RequestKey("caller", User)
CLIENT_ID = web.RequestKey("client_id", str)


def caller(request: web.Request) -> User:
    return request[CALLER]


def world_of(request: web.Request) -> World:
    return request.app[SANDBOX].world


def page_url(request: web.Request) -> str:
    return f"{world_of(request).base_url}{request.path}"


def query_of(request: web.Request) -> dict[str, str]:
    return dict(request.query.items())


def collection(items: list[dict[str, Any]], pagination: dict[str, object]) -> web.Response:
    return json_response({"collection": items, "pagination": pagination})


# ------------------------------------------------------------------- users
@routes.get("/users/me")
async def users_me(request: web.Request) -> web.StreamResponse:
    return json_response({"resource": world_of(request).user_json(caller(request))})


@routes.get("/users/{uuid}")
async def get_user(request: web.Request) -> web.StreamResponse:
    world = world_of(request)
    user = world.get_user(request.match_info["uuid"])
    if user.organization_id != caller(request).organization_id:
        raise ApiError(403, NO_PERMISSION_MESSAGE)
    return json_response({"resource": world.user_json(user)})


# ----------------------------------------------------- webhook subscriptions
@routes.post("/webhook_subscriptions")
async def create_subscription(request: web.Request) -> web.StreamResponse:
    world = world_of(request)
    raw = await request.read()
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise ApiError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    sub = world.create_subscription(caller(request), request.get(CLIENT_ID), body)
    return json_response({"resource": world.subscription_json(sub)}, status=201)


@routes.get("/webhook_subscriptions")
async def list_subscriptions(request: web.Request) -> web.StreamResponse:
    world = world_of(request)
    query = query_of(request)
    subs = world.list_subscriptions(caller(request), query)
    sort = query.get("sort", "created_at:asc")
    if sort not in ("created_at:asc", "created_at:desc"):
        raise invalid_argument("sort", "must be created_at:asc or created_at:desc")
    subs.sort(key=lambda s: (s.created_at, s.id), reverse=sort.endswith("desc"))
    page, pagination = paginate(subs, query, page_url(request))
    return collection([world.subscription_json(s) for s in page], pagination)


@routes.get("/webhook_subscriptions/{uuid}")
async def get_subscription(request: web.Request) -> web.StreamResponse:
    world = world_of(request)
    sub = world.visible_subscription(caller(request), request.match_info["uuid"])
    return json_response({"resource": world.subscription_json(sub)})


@routes.delete("/webhook_subscriptions/{uuid}")
async def delete_subscription(request: web.Request) -> web.StreamResponse:
    world = world_of(request)
    sub = world.visible_subscription(caller(request), request.match_info["uuid"])
    world.delete_subscription(sub)
    return web.Response(status=204)


# --------------------------------------------------------- scheduled events
def _time_filter(query: dict[str, str], name: str) -> float | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_iso(raw)
    except ValueError:
        raise invalid_argument(name, "must be an ISO 8601 time with a time zone") from None


@routes.get("/scheduled_events")
async def list_events(request: web.Request) -> web.StreamResponse:
    world = world_of(request)
    me = caller(request)
    query = query_of(request)
    user_uri, org_uri = query.get("user"), query.get("organization")
    if not user_uri and not org_uri:
        raise ApiError(
            400,
            details=[
                {"parameter": "user", "message": "user or organization is required"},
                {"parameter": "organization", "message": "user or organization is required"},
            ],
        )
    events = list(world.events.values())
    if org_uri:
        org_id = world.uri_id(org_uri, "organizations")
        if org_id is None or org_id not in world.organizations:
            raise invalid_argument("organization", "is not a known organization URI")
        if org_id != me.organization_id or not me.is_admin:
            raise ApiError(403, NO_PERMISSION_MESSAGE)
        events = [e for e in events if e.organization_id == org_id]
    if user_uri:
        user_id = world.uri_id(user_uri, "users")
        if user_id is None or user_id not in world.users:
            raise invalid_argument("user", "is not a known user URI")
        target = world.users[user_id]
        if user_id != me.id and not (me.is_admin and target.organization_id == me.organization_id):
            raise ApiError(403, NO_PERMISSION_MESSAGE)
        events = [e for e in events if e.host_id == user_id]
    status = query.get("status")
    if status:
        if status not in ("active", "canceled"):
            raise invalid_argument("status", "must be active or canceled")
        events = [e for e in events if e.status == status]
    min_start = _time_filter(query, "min_start_time")
    max_start = _time_filter(query, "max_start_time")
    if min_start is not None:
        events = [e for e in events if e.start_time >= min_start]
    if max_start is not None:
        events = [e for e in events if e.start_time < max_start]
    email = query.get("invitee_email")
    if email:
        wanted = email.lower()
        events = [
            e
            for e in events
            if any(world.invitees[i].email.lower() == wanted for i in e.invitee_ids)
        ]
    sort = query.get("sort", "start_time:asc")
    if sort not in ("start_time:asc", "start_time:desc"):
        raise invalid_argument("sort", "must be start_time:asc or start_time:desc")
    events.sort(key=lambda e: (e.start_time, e.id), reverse=sort.endswith("desc"))
    page, pagination = paginate(events, query, page_url(request))
    return collection([world.event_json(e) for e in page], pagination)


@routes.get("/scheduled_events/{uuid}")
async def get_event(request: web.Request) -> web.StreamResponse:
    world = world_of(request)
    event = world.get_event(request.match_info["uuid"])
    if not world.event_visible(caller(request), event):
        raise ApiError(403, NO_PERMISSION_MESSAGE)
    return json_response({"resource": world.event_json(event)})


@routes.get("/scheduled_events/{uuid}/invitees")
async def list_invitees(request: web.Request) -> web.StreamResponse:
    world = world_of(request)
    event = world.get_event(request.match_info["uuid"])
    if not world.event_visible(caller(request), event):
        raise ApiError(403, NO_PERMISSION_MESSAGE)
    query = query_of(request)
    invitees = [world.invitees[i] for i in event.invitee_ids]
    status = query.get("status")
    if status:
        if status not in ("active", "canceled"):
            raise invalid_argument("status", "must be active or canceled")
        invitees = [i for i in invitees if i.status == status]
    email = query.get("email")
    if email:
        invitees = [i for i in invitees if i.email.lower() == email.lower()]
    sort = query.get("sort", "created_at:asc")
    if sort not in ("created_at:asc", "created_at:desc"):
        raise invalid_argument("sort", "must be created_at:asc or created_at:desc")
    invitees.sort(key=lambda i: (i.created_at, i.id), reverse=sort.endswith("desc"))
    page, pagination = paginate(invitees, query, page_url(request))
    return collection([world.invitee_json(i) for i in page], pagination)


@routes.get("/scheduled_events/{uuid}/invitees/{invitee_uuid}")
async def get_invitee(request: web.Request) -> web.StreamResponse:
    world = world_of(request)
    event = world.get_event(request.match_info["uuid"])
    if not world.event_visible(caller(request), event):
        raise ApiError(403, NO_PERMISSION_MESSAGE)
    invitee = world.get_invitee(request.match_info["invitee_uuid"])
    if invitee.event_id != event.id:
        raise ApiError(404)
    return json_response({"resource": world.invitee_json(invitee)})
