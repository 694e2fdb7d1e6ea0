"""Deliveries as the webhook path hands them to its ledger (DR-48), for three connected users:
what the group commit's tests and the doorbells' tests write."""

from __future__ import annotations

from domain.meetings import Invitee, Meeting, MeetingStatus
from domain.ports import DeliveryRecord, MeetingChange, Route, UnitOfWorkFactory
from tests.support.connections import EV, T0, add, cid, connection

USERS = ("ada", "bob", "cy")


def route_of(user: str) -> Route:
    n = USERS.index(user) + 1
    return Route(
        user_id=user,
        connection_id=cid(n),
        calendly_user_uri=f"https://api.calendly.test/users/u{n}",
    )


def delivery(user: str | None, event: int, invitee: int, *, cancel: bool = False) -> DeliveryRecord:
    """A booking (or its cancel) of `user`'s event, or a delivery no user was found for."""
    kind = "canceled" if cancel else "created"
    key = f"{event}:{invitee}:{kind}"
    if user is None:
        return DeliveryRecord(
            event_id=f"unrouted:{key}",
            event_type="invitee.created",
            payload=b'{"event": "invitee.created"}',
            route=None,
            outcome="unusable",
            reason="no connected user for this delivery",
        )
    status = MeetingStatus.CANCELED if cancel else MeetingStatus.ACTIVE
    event_uri = f"{EV}{user}-{event}"
    return DeliveryRecord(
        event_id=f"{route_of(user).connection_id}:{key}",
        event_type=f"invitee.{kind}",
        payload=b'{"event": "invitee.%s"}' % kind.encode(),
        route=route_of(user),
        outcome="applied",
        change=MeetingChange(
            meeting=Meeting(event_uri=event_uri, name="Intro", start_time=T0, status=status),
            invitee=Invitee(
                invitee_uri=f"{event_uri}/invitees/{invitee}",
                event_uri=event_uri,
                email=f"guest{invitee}@example.com",
                status=status,
            ),
        ),
    )


async def connected(uow: UnitOfWorkFactory) -> None:
    for n, user in enumerate(USERS, start=1):
        await add(uow, connection(user, n, cid(n)))
