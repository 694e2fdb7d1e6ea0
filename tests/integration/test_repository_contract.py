"""The same repository behaviours against the in-memory fake and against Postgres."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest
from msgspec.structs import replace

from domain.errors import AccountAlreadyConnected, ConcurrentUpdate
from domain.meetings import Cancellation, Invitee, Meeting, MeetingStatus
from domain.model import Connection, PendingAuthorization
from domain.ports import (
    DetailsWanted,
    MeetingChange,
    MeetingQuery,
    Route,
    UnitOfWork,
    UnitOfWorkFactory,
)
from domain.secret import Secret
from tests.support.connections import CID_A, CID_B, EV, T0, account, add, connection


async def test_a_connection_round_trips_with_its_secrets(any_uow: UnitOfWorkFactory) -> None:
    stored = await add(any_uow, connection("a", 1, CID_A))
    async with any_uow("a") as uow:
        loaded = await uow.connections.get("a")
    assert loaded == stored
    assert loaded is not None
    assert loaded.tokens is not None
    assert loaded.tokens.access_token.reveal() == "at-1"
    assert loaded.signing_key == Secret("key-1")


async def test_other_tenants_see_no_connection(any_uow: UnitOfWorkFactory) -> None:
    await add(any_uow, connection("a", 1, CID_A))
    async with any_uow("b") as uow:
        assert await uow.connections.get("a") is None
    async with any_uow() as uow:
        assert await uow.connections.get("a") is None


async def test_a_stale_version_is_refused(any_uow: UnitOfWorkFactory) -> None:
    stored = await add(any_uow, connection("a", 1, CID_A))
    async with any_uow("a") as uow:
        saved = await uow.connections.save(replace(stored, last_error="x"))
        await uow.commit()
    assert saved.version == stored.version + 1
    async with any_uow("a") as uow:
        with pytest.raises(ConcurrentUpdate):
            await uow.connections.save(replace(stored, last_error="stale"))


async def test_one_calendly_account_belongs_to_one_user(any_uow: UnitOfWorkFactory) -> None:
    await add(any_uow, connection("a", 1, CID_A))
    with pytest.raises(AccountAlreadyConnected):
        await add(any_uow, connection("b", 1, CID_B))
    stored_b = await add(any_uow, connection("b", 2, CID_B))
    async with any_uow("b") as uow:
        with pytest.raises(AccountAlreadyConnected):
            await uow.connections.save(replace(stored_b, account=account(1)))


async def test_a_disconnected_account_can_be_connected_elsewhere(
    any_uow: UnitOfWorkFactory,
) -> None:
    stored = await add(any_uow, connection("a", 1, CID_A))
    async with any_uow("a") as uow:
        await uow.connections.save(stored.disconnected(T0))
        await uow.commit()
    await add(any_uow, connection("b", 1, CID_B))
    async with any_uow() as uow:
        route = await uow.routes.find(calendly_user_uris=[account(1).user_uri])
    assert route is not None
    assert route.user_id == "b"


async def test_routes_follow_the_connection(any_uow: UnitOfWorkFactory) -> None:
    stored = await add(any_uow, connection("a", 1, CID_A))
    async with any_uow() as uow:
        by_token = await uow.routes.find(webhook_token="token-a1")
        by_uri = await uow.routes.find(calendly_user_uris=[account(1).user_uri])
        unknown = await uow.routes.find(webhook_token="nope")
    assert by_token is not None
    assert by_uri is not None
    assert (by_token.user_id, by_token.connection_id) == ("a", CID_A)
    assert by_uri == by_token
    assert unknown is None
    async with any_uow("a") as uow:
        await uow.connections.save(stored.with_webhook_token("token-new", T0))
        await uow.commit()
    async with any_uow() as uow:
        assert await uow.routes.find(webhook_token="token-a1") is None
        assert await uow.routes.find(webhook_token="token-new") is not None


async def test_a_route_carries_the_connections_signing_key(any_uow: UnitOfWorkFactory) -> None:
    stored = await add(any_uow, connection("a", 1, CID_A))
    async with any_uow() as uow:
        found = await uow.routes.find(webhook_token="token-a1")
        assert found is not None
        assert found.version  # which version of the route (DR-60): compared below without it
        assert msgspec.structs.replace(found, version=None) == Route(
            user_id="a",
            connection_id=CID_A,
            calendly_user_uri=account(1).user_uri,
            signing_key=Secret("key-1"),
        )
    key = Secret("a-rotated-subscription-key")
    async with any_uow("a") as uow:
        await uow.connections.save(stored.with_subscription("https://sub/1", key, T0))
        await uow.commit()
    async with any_uow() as uow:
        by_token = await uow.routes.find(webhook_token="token-a1")
        by_uri = await uow.routes.find(calendly_user_uris=[account(1).user_uri])
    assert by_token is not None
    assert by_token.signing_key == key
    assert by_uri == by_token


async def test_routing_by_uris_takes_the_first_connected_one_in_order(
    any_uow: UnitOfWorkFactory,
) -> None:
    await add(any_uow, connection("a", 1, CID_A))
    await add(any_uow, connection("b", 2, CID_B))
    strangers = [f"https://api.calendly.com/users/stranger-{i}" for i in range(50)]
    async with any_uow() as uow:
        b_first = await uow.routes.find(
            calendly_user_uris=[*strangers, account(2).user_uri, account(1).user_uri]
        )
        a_first = await uow.routes.find(
            calendly_user_uris=[account(1).user_uri, account(2).user_uri]
        )
        nobody = await uow.routes.find(calendly_user_uris=strangers)
        nothing = await uow.routes.find(calendly_user_uris=[])
    assert b_first is not None
    assert b_first.user_id == "b"
    assert a_first is not None
    assert a_first.user_id == "a"
    assert nobody is None
    assert nothing is None


async def test_without_commit_nothing_is_kept(any_uow: UnitOfWorkFactory) -> None:
    async with any_uow("a") as uow:
        await uow.connections.add(connection("a", 1, CID_A))
    async with any_uow("a") as uow:
        assert await uow.connections.get("a") is None


async def test_a_pending_authorization_is_taken_once(any_uow: UnitOfWorkFactory) -> None:
    pending = PendingAuthorization(
        state="s" * 43,
        user_id="a",
        code_verifier=Secret("v" * 64),
        browser_binding="digest",
        completion_challenge="c" * 43,
        created_at=T0,
        expires_at=T0 + timedelta(minutes=10),
    )
    async with any_uow("a") as uow:
        await uow.authorizations.add(pending)
        await uow.commit()
    async with any_uow() as uow:
        peeked = [await uow.authorizations.peek(pending.state) for _ in range(2)]
    async with any_uow() as uow:
        first = await uow.authorizations.take(pending.state)
        await uow.commit()
    async with any_uow() as uow:
        second = await uow.authorizations.take(pending.state)
        gone = await uow.authorizations.peek(pending.state)
    assert peeked == [pending, pending]
    assert first == pending
    assert second is None
    assert gone is None


async def test_connected_at_is_kept(any_uow: UnitOfWorkFactory) -> None:
    stored = await add(any_uow, connection("a", 1, CID_A))
    assert stored.connected_at is None
    async with any_uow("a") as uow:
        latest = await uow.connections.get("a", for_update=True)
        assert latest is not None
        await uow.connections.save(latest.connected_since(T0 + timedelta(days=1)))
        await uow.commit()
    async with any_uow("a") as uow:
        found = await uow.connections.get("a")
    assert found is not None
    assert found.connected_at == T0 + timedelta(days=1)


async def test_a_delivery_is_recorded_once(any_uow: UnitOfWorkFactory) -> None:
    c = await add(any_uow, connection("a", 1, CID_A))
    results = []
    for _ in range(2):
        async with any_uow("a") as uow:
            results.append(
                await uow.webhook_events.record(
                    event_id="k1",
                    event_type="invitee.created",
                    payload=b"{}",
                    connection=c,
                    outcome="applied",
                )
            )
            await uow.commit()
    assert results == [True, False]


@pytest.mark.parametrize("body", [b"{not json", b'{"a": "\\u0000"}', b"\xff\xfe"])
async def test_unrouted_and_unstorable_bodies_are_recorded_too(
    any_uow: UnitOfWorkFactory, body: bytes
) -> None:
    async with any_uow() as uow:
        assert await uow.webhook_events.record(
            event_id=f"unrouted:{body!r}",
            event_type="unknown",
            payload=body,
            connection=None,
            outcome="unusable",
            reason="test",
        )
        await uow.commit()


def invitee(n: int, event: str = "e1", **kw: object) -> Invitee:
    return Invitee(invitee_uri=f"{EV}{event}/invitees/i{n}", event_uri=EV + event, **kw)  # type: ignore[arg-type]


async def apply(uow_factory: UnitOfWorkFactory, c: Connection, *changes: MeetingChange) -> None:
    for change in changes:
        async with uow_factory(c.user_id) as uow:
            await uow.meetings.apply(c, change)
            await uow.commit()


async def listed(uow_factory: UnitOfWorkFactory, user_id: str, **query: object) -> list[object]:
    async with uow_factory(user_id) as uow:
        return list(await uow.meetings.list(user_id, MeetingQuery(**query)))  # type: ignore[arg-type]


async def test_meetings_merge_by_the_domain_rules(any_uow: UnitOfWorkFactory) -> None:
    c = await add(any_uow, connection("a", 1, CID_A))
    start = T0 + timedelta(days=3)
    cancel = Cancellation(canceled_by="Guest", reason="ill", canceler_type="invitee")
    await apply(
        any_uow,
        c,
        MeetingChange(
            meeting=Meeting(
                event_uri=EV + "e1", status=MeetingStatus.CANCELED, cancellation=cancel
            ),
            invitee=invitee(
                1,
                status=MeetingStatus.CANCELED,
                cancellation=cancel,
                rescheduled=True,
                new_invitee_uri=EV + "e2/invitees/i2",
            ),
        ),
        MeetingChange(
            meeting=Meeting(
                event_uri=EV + "e1",
                name="Chat",
                start_time=start,
                end_time=start + timedelta(minutes=30),
                location={"type": "zoom", "join_url": "https://z/1"},
            ),
            invitee=invitee(1, email="g@example.org", name="Grace"),
        ),
        MeetingChange(
            meeting=Meeting(event_uri=EV + "e1"),
            invitee=invitee(1),
            no_show=True,
            no_show_at=T0 + timedelta(hours=2),
        ),
        MeetingChange(
            meeting=Meeting(event_uri=EV + "e1"),
            invitee=invitee(1),
            no_show=False,
            no_show_at=T0 + timedelta(hours=1),  # older than the mark: loses
        ),
    )
    (view,) = await listed(any_uow, "a")
    m, (i,) = view.meeting, view.invitees  # type: ignore[attr-defined]
    assert m.status is MeetingStatus.CANCELED
    assert (m.name, m.start_time, m.location) == (
        "Chat",
        start,
        {"type": "zoom", "join_url": "https://z/1"},
    )
    assert m.cancellation == cancel
    assert i.status is MeetingStatus.CANCELED
    assert (i.email, i.name) == ("g@example.org", "Grace")
    assert i.rescheduled
    assert i.new_invitee_uri == EV + "e2/invitees/i2"
    assert i.no_show is True
    assert i.no_show_changed_at == T0 + timedelta(hours=2)


async def test_meetings_list_in_start_order_with_filters_and_keyset(
    any_uow: UnitOfWorkFactory,
) -> None:
    c = await add(any_uow, connection("a", 1, CID_A))
    other = await add(any_uow, connection("b", 2, CID_B))
    for day in (3, 1, 2):
        start = T0 + timedelta(days=day)
        status = MeetingStatus.CANCELED if day == 2 else MeetingStatus.ACTIVE
        await apply(
            any_uow,
            c,
            MeetingChange(
                meeting=Meeting(event_uri=f"{EV}d{day}", start_time=start, status=status)
            ),
        )
    await apply(any_uow, c, MeetingChange(meeting=Meeting(event_uri=f"{EV}unknown-time")))
    await apply(
        any_uow, other, MeetingChange(meeting=Meeting(event_uri=f"{EV}theirs", start_time=T0))
    )
    names = [v.meeting.event_uri[len(EV) :] for v in await listed(any_uow, "a")]  # type: ignore[attr-defined]
    assert names == ["d1", "d2", "d3", "unknown-time"]
    active = await listed(any_uow, "a", status=MeetingStatus.ACTIVE)
    assert [v.meeting.event_uri[len(EV) :] for v in active] == ["d1", "d3", "unknown-time"]  # type: ignore[attr-defined]
    window = await listed(
        any_uow, "a", starts_after=T0 + timedelta(days=2), starts_before=T0 + timedelta(days=3)
    )
    assert [v.meeting.event_uri[len(EV) :] for v in window] == ["d2"]  # type: ignore[attr-defined]
    first_two = await listed(any_uow, "a", limit=2)
    last = first_two[-1]
    rest = await listed(any_uow, "a", after=(last.meeting.start_time, last.id))  # type: ignore[attr-defined]
    assert [v.meeting.event_uri[len(EV) :] for v in rest] == ["d3", "unknown-time"]  # type: ignore[attr-defined]
    after_null = await listed(any_uow, "a", after=(None, rest[-1].id))  # type: ignore[attr-defined]
    assert after_null == []
    assert await listed(any_uow, "b") != []
    async with any_uow("b") as uow:
        assert await uow.meetings.list("a", MeetingQuery()) == []


async def test_change_seq_counts_each_users_own_changes_only(any_uow: UnitOfWorkFactory) -> None:
    a = await add(any_uow, connection("a", 1, CID_A))
    b = await add(any_uow, connection("b", 2, CID_B))
    for owner, event in [(a, "e1"), (b, "f1"), (a, "e2"), (a, "e1"), (b, "f2"), (a, "e3")]:
        await apply(any_uow, owner, MeetingChange(meeting=Meeting(event_uri=EV + event)))

    async def changes(user_id: str) -> tuple[int, list[tuple[str, int]]]:
        async with any_uow(user_id) as uow:
            latest = await uow.meetings.latest_change(user_id)
            views = await uow.meetings.changed_since(user_id, 0, 100)
        return latest, [(v.meeting.event_uri[len(EV) :], v.change_seq) for v in views]

    assert await changes("a") == (4, [("e2", 2), ("e1", 3), ("e3", 4)])
    assert await changes("b") == (2, [("f1", 1), ("f2", 2)])


# ------------------------------------------- details read from Calendly (DR-47)
async def _apply(any_uow: UnitOfWorkFactory, stored: Connection, change: MeetingChange) -> None:
    async with any_uow(stored.user_id) as uow:
        await uow.meetings.apply(stored, change)
        await uow.commit()


LEGACY = MeetingChange(meeting=Meeting(event_uri=EV + "e1"), needs_details=True)


async def _asked_for_details(any_uow: UnitOfWorkFactory) -> tuple[Connection, DetailsWanted]:
    """User a's connection after a legacy delivery asked for its event's details."""
    stored = await add(any_uow, connection("a", 1, CID_A))
    await _apply(any_uow, stored, LEGACY)
    async with any_uow("a") as uow:
        (wanted,) = await uow.meetings.wanting_details(CID_A, 10)
    return stored, wanted


async def _postpone_503(uow: UnitOfWork, wanted: DetailsWanted) -> None:
    """A read of `wanted` that failed with Calendly's 503: retried 5 s later at the earliest."""
    await uow.meetings.postpone_details(
        CID_A, wanted, "Calendly answered 503", base=timedelta(seconds=5), cap=timedelta(minutes=30)
    )


async def _details(any_uow: UnitOfWorkFactory, user_id: str) -> list[tuple[str, str | None]]:
    async with any_uow(user_id) as uow:
        views = await uow.meetings.list(user_id, MeetingQuery())
    return [(v.details, v.details_error) for v in views]


async def test_a_request_for_details_is_met_only_by_a_read_made_for_it(
    any_uow: UnitOfWorkFactory,
) -> None:
    stored = await add(any_uow, connection("a", 1, CID_A))
    await _apply(any_uow, stored, LEGACY)
    assert await _details(any_uow, "a") == [("pending", None)]
    async with any_uow("a") as uow:
        wanted = await uow.meetings.wanting_details(CID_A, 10)
    assert [w.event_uri for w in wanted] == [EV + "e1"]
    first = wanted[0].requested_at
    # A second delivery asks again while the event is being read: the read does not meet it.
    await _apply(any_uow, stored, LEGACY)
    event = Meeting(event_uri=EV + "e1", name="Intro", status=MeetingStatus.CANCELED)
    await _apply(any_uow, stored, MeetingChange(meeting=event, details_for=first))
    assert await _details(any_uow, "a") == [("pending", None)]
    async with any_uow("a") as uow:
        (again,) = await uow.meetings.wanting_details(CID_A, 10)
        meetings = await uow.meetings.list("a", MeetingQuery())
    assert again.requested_at > first
    assert meetings[0].meeting.name == "Intro"  # what was read is merged all the same
    assert meetings[0].meeting.status is MeetingStatus.CANCELED
    # The read made for the latest request meets it; the other tenant sees none of this.
    await _apply(
        any_uow,
        stored,
        MeetingChange(meeting=Meeting(event_uri=EV + "e1"), details_for=again.requested_at),
    )
    assert await _details(any_uow, "a") == [("complete", None)]
    async with any_uow("b") as uow:
        assert await uow.meetings.wanting_details(CID_A, 10) == []
    async with any_uow("a") as uow:
        assert await uow.meetings.wanting_details(CID_A, 10) == []


async def test_an_event_calendly_will_not_show_is_unavailable_until_asked_again(
    any_uow: UnitOfWorkFactory,
) -> None:
    stored, wanted = await _asked_for_details(any_uow)
    refused = MeetingChange(
        meeting=Meeting(event_uri=EV + "e1"),
        details_for=wanted.requested_at,
        details_error="Calendly answered 404 for this event",
    )
    await _apply(any_uow, stored, refused)
    assert await _details(any_uow, "a") == [("unavailable", "Calendly answered 404 for this event")]
    await _apply(any_uow, stored, LEGACY)
    assert await _details(any_uow, "a") == [("pending", None)]


async def test_a_failed_read_waits_for_its_own_retry_unless_asked_again(
    any_uow: UnitOfWorkFactory,
) -> None:
    stored, wanted = await _asked_for_details(any_uow)
    async with any_uow("a") as uow:
        assert await uow.meetings.next_details_due(CID_A) == wanted.requested_at
        await _postpone_503(uow, wanted)
        await uow.commit()
    async with any_uow("a") as uow:
        assert await uow.meetings.wanting_details(CID_A, 10) == []  # not before its retry
        retry = await uow.meetings.next_details_due(CID_A)
    assert retry is not None
    assert retry > wanted.requested_at + timedelta(seconds=4)
    assert await _details(any_uow, "a") == [("pending", "Calendly answered 503")]
    # A delivery asks again: due at once, the old trouble gone.
    await _apply(any_uow, stored, LEGACY)
    assert await _details(any_uow, "a") == [("pending", None)]
    async with any_uow("a") as uow:
        assert len(await uow.meetings.wanting_details(CID_A, 10)) == 1


async def test_a_delivery_with_its_event_leaves_a_request_and_its_trouble_as_they_are(
    any_uow: UnitOfWorkFactory,
) -> None:
    """A plain change (it neither lacks the details nor carries a read of them) is written by
    a statement without the details' part (DR-53): what that part would do, it must not need."""
    stored, wanted = await _asked_for_details(any_uow)
    async with any_uow("a") as uow:
        await _postpone_503(uow, wanted)
        await uow.commit()
    async with any_uow("a") as uow:
        retry = await uow.meetings.next_details_due(CID_A)

    event = Meeting(event_uri=EV + "e1", name="Intro", status=MeetingStatus.CANCELED)
    await _apply(any_uow, stored, MeetingChange(meeting=event))
    await _apply(any_uow, stored, MeetingChange(meeting=Meeting(event_uri=EV + "e2")))

    async with any_uow("a") as uow:
        assert await uow.meetings.next_details_due(CID_A) == retry
        meetings = await uow.meetings.list("a", MeetingQuery())
    assert sorted((m.meeting.event_uri, m.details, m.details_error) for m in meetings) == [
        (EV + "e1", "pending", "Calendly answered 503"),
        (EV + "e2", "complete", None),
    ]
    assert [m.meeting.name for m in meetings if m.meeting.event_uri == EV + "e1"] == ["Intro"]
    # The read made for the request still meets it.
    read = MeetingChange(meeting=Meeting(event_uri=EV + "e1"), details_for=wanted.requested_at)
    await _apply(any_uow, stored, read)
    assert await _details(any_uow, "a") == [("complete", None), ("complete", None)]


async def test_change_numbers_go_on_after_an_erasure(any_uow: UnitOfWorkFactory) -> None:
    """An erasure keeps the last number given (DR-52): a page that still holds a cursor from
    before is sent what comes after, and `latest_change` never goes back."""
    a = await add(any_uow, connection("a", 1, CID_A))
    for event in ("e1", "e2"):
        await apply(any_uow, a, MeetingChange(meeting=Meeting(event_uri=EV + event)))
    async with any_uow("a") as uow:
        assert await uow.meetings.latest_change("a") == 2
        await uow.erasure.erase("a")
        await uow.commit()
    async with any_uow("a") as uow:
        assert await uow.meetings.latest_change("a") == 2
        assert await uow.meetings.changed_since("a", 0, 10) == []
    a = await add(any_uow, connection("a", 1, CID_A))
    await apply(any_uow, a, MeetingChange(meeting=Meeting(event_uri=EV + "e3")))
    async with any_uow("a") as uow:
        assert await uow.meetings.latest_change("a") == 3
        assert [v.change_seq for v in await uow.meetings.changed_since("a", 2, 10)] == [3]
