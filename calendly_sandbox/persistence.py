"""Keep the sandbox's world across restarts (users, grants, subscriptions, meetings)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import msgspec

from .model import Invitee, Organization, ScheduledEvent, Subscription, TokenGrant, User
from .world import World


class Snapshot(msgspec.Struct, kw_only=True):
    organizations: list[Organization]
    users: list[User]
    grants: list[TokenGrant]
    subscriptions: list[Subscription]
    events: list[ScheduledEvent]
    invitees: list[Invitee]
    event_type_ids: dict[str, str]
    clock_offset: float = 0.0


def snapshot(world: World) -> bytes:
    grants = {id(g): g for g in world.grants_by_access.values()}
    return msgspec.json.encode(
        Snapshot(
            organizations=list(world.organizations.values()),
            users=list(world.users.values()),
            grants=list(grants.values()),
            subscriptions=list(world.subscriptions.values()),
            events=list(world.events.values()),
            invitees=list(world.invitees.values()),
            event_type_ids=dict(world.event_type_ids),
            clock_offset=world.clock.offset,
        )
    )


def restore(world: World, data: bytes) -> None:
    """Load a snapshot; raises msgspec.DecodeError / ValidationError for a bad file."""
    snap = msgspec.json.decode(data, type=Snapshot)
    world.people.organizations = {o.id: o for o in snap.organizations}
    world.people.users = {u.id: u for u in snap.users}
    world.grants.by_access = {g.access_token: g for g in snap.grants}
    world.grants.by_refresh = {g.refresh_token: g for g in snap.grants}
    world.webhooks.subscriptions = {s.id: s for s in snap.subscriptions}
    world.bookings.events = {e.id: e for e in snap.events}
    world.bookings.invitees = {i.id: i for i in snap.invitees}
    world.bookings.event_type_ids = dict(snap.event_type_ids)
    world.clock.offset = snap.clock_offset


def save(world: World, path: Path) -> None:
    """Write atomically (a crash mid-write leaves the previous file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(snapshot(world))
    tmp.replace(path)


async def keep_saving(world: World, path: Path, every: float = 2.0) -> None:
    """Save every few seconds while running, and once more when stopped."""
    last = b""
    try:
        while True:
            await asyncio.sleep(every)
            current = snapshot(world)
            if current != last:
                await asyncio.to_thread(save, world, path)
                last = current
    finally:
        with contextlib.suppress(OSError):
            save(world, path)
