"""Webhook deliveries through HandleWebhookEvent: signatures, routing, dedup and effects."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.calendly.webhook_decoder import MsgspecWebhookDecoder
from domain.errors import InvalidSignature, RouteChanged, StorageUnavailable
from domain.meetings import MeetingStatus
from domain.model import Connection
from domain.ports import DeliveryRecord, Route
from domain.secret import Secret
from domain.usecases.handle_webhook_event import (
    MAX_ROUTE_CANDIDATES,
    HandleWebhookEvent,
    UnitOfWorkLedger,
    WebhookCommand,
    WebhookResult,
)
from domain.webhooks import InboundWebhook, WebhookDecoder
from tests.fakes.calendly import FakeUser
from tests.fakes.storage import meetings_of
from tests.support.core import APP_KEY, Core, build_core
from tests.support.deliveries import envelope, invitee_payload, sign

EVENT = "https://api.calendly.test/scheduled_events/"


async def connected(core: Core, user_id: str = "u", email: str = "ada@example.com") -> FakeUser:
    user = core.calendly.add_user(email)
    await core.connect(user_id, user)
    return user


def stamp(core: Core) -> int:
    """Signatures are made at the fake clock's time, which the verifier also reads."""
    return int(core.clock.now().timestamp())


async def deliver(
    core: Core,
    body: bytes,
    *,
    key: str | None = None,
    token: str | None = None,
    user_id: str = "u",
    signature: str | None = None,
) -> WebhookResult:
    """Deliver as Calendly would to the connection's own URL, signed with its own key."""
    connection = core.db.connections.get(user_id)
    if key is None and connection is not None and connection.signing_key is not None:
        key = connection.signing_key.reveal()
    if token is None and connection is not None:
        token = connection.webhook_token
    return await core.handle_webhook(
        WebhookCommand(
            body=body,
            signature=signature or sign(body, key or APP_KEY.reveal(), stamp(core)),
            webhook_token=token,
        )
    )


def created(host: FakeUser, event_id: str = "e1", invitee_id: str = "i1", **kw: Any) -> bytes:
    payload = invitee_payload(host_uri=host.uri, event_id=event_id, invitee_id=invitee_id, **kw)
    return envelope("invitee.created", payload, host.uri)


def canceled(host: FakeUser, event_id: str = "e1", invitee_id: str = "i1", **kw: Any) -> bytes:
    kw.setdefault("canceler_type", "invitee")
    kw.setdefault("event_status", "canceled")
    payload = invitee_payload(
        host_uri=host.uri, event_id=event_id, invitee_id=invitee_id, status="canceled", **kw
    )
    return envelope("invitee.canceled", payload, host.uri)


async def test_a_booking_becomes_a_meeting_of_that_user_only(core: Core) -> None:
    ada = await connected(core)
    await connected(core, "other", "bob@example.com")
    result = await deliver(core, created(ada))
    assert result.outcome == "applied"
    assert result.user_id == "u"
    meetings = meetings_of(core.db, "u")
    meeting, invitees = meetings[EVENT + "e1"]
    assert meeting.status is MeetingStatus.ACTIVE
    assert meeting.name == "30 Minute Meeting"
    assert list(invitees) == [EVENT + "e1/invitees/i1"]
    assert meetings_of(core.db, "other") == {}


async def test_the_app_level_key_is_accepted_too(core: Core) -> None:
    ada = await connected(core)
    result = await deliver(core, created(ada), key=APP_KEY.reveal())
    assert result.outcome == "applied"


async def test_the_shared_callback_url_routes_by_created_by(core: Core) -> None:
    ada = await connected(core)
    body = created(ada)
    routed = await core.handle_webhook(
        WebhookCommand(body=body, signature=sign(body, APP_KEY.reveal(), stamp(core)))
    )
    assert routed.outcome == "applied"
    assert routed.user_id == "u"


async def test_an_unknown_callback_token_is_stored_aside(core: Core) -> None:
    ada = await connected(core)
    result = await deliver(core, created(ada), key=APP_KEY.reveal(), token="retired-token")
    assert result.outcome == "stored_aside"
    assert meetings_of(core.db, "u") == {}


@pytest.mark.parametrize("tamper", ["body", "timestamp", "key"])
async def test_a_forged_delivery_has_no_effect(core: Core, tamper: str) -> None:
    ada = await connected(core)
    body = created(ada)
    t = stamp(core)
    good = sign(body, core.db.connections["u"].signing_key.reveal(), t)  # type: ignore[union-attr]
    if tamper == "body":
        body = body.replace(b"i1", b"i9")
        header = good
    elif tamper == "timestamp":
        header = good.replace(f"t={t}", f"t={t - 1}")
    else:
        header = sign(body, "not-the-key", t)
    with pytest.raises(InvalidSignature):
        await deliver(core, body, signature=header)
    assert core.db.events == {}
    assert meetings_of(core.db, "u") == {}


async def test_timestamps_at_the_tolerance_boundary(core: Core) -> None:
    ada = await connected(core)
    key = core.db.connections["u"].signing_key.reveal()  # type: ignore[union-attr]
    body = created(ada)
    base = stamp(core)
    token = core.db.connections["u"].webhook_token
    for offset, ok in [(-180, True), (180, True), (-181, False), (181, False)]:
        command = WebhookCommand(
            body=created(ada, invitee_id=f"i{offset}"),
            signature=sign(created(ada, invitee_id=f"i{offset}"), key, base + offset),
            webhook_token=token,
        )
        if ok:
            assert (await core.handle_webhook(command)).outcome == "applied"
        else:
            with pytest.raises(InvalidSignature, match="tolerance"):
                await core.handle_webhook(command)
    assert body  # the base delivery itself is never sent


async def test_an_exact_replay_takes_effect_once(core: Core) -> None:
    ada = await connected(core)
    body = created(ada)
    first = await deliver(core, body)
    second = await deliver(core, body)
    assert (first.outcome, second.outcome) == ("applied", "duplicate")
    assert len(core.db.events) == 1


async def test_fifty_concurrent_copies_take_effect_once(core: Core) -> None:
    ada = await connected(core)
    body = created(ada)
    results = await asyncio.gather(*(deliver(core, body) for _ in range(50)))
    outcomes = sorted(r.outcome for r in results)
    assert outcomes.count("applied") == 1
    assert outcomes.count("duplicate") == 49
    assert len(core.db.events) == 1


async def test_cancel_before_create_ends_canceled(core: Core) -> None:
    ada = await connected(core)
    await deliver(core, canceled(ada))
    await deliver(core, created(ada))
    meeting, invitees = meetings_of(core.db, "u")[EVENT + "e1"]
    assert meeting.status is MeetingStatus.CANCELED
    assert invitees[EVENT + "e1/invitees/i1"].status is MeetingStatus.CANCELED
    assert invitees[EVENT + "e1/invitees/i1"].cancellation is not None


@pytest.mark.parametrize("order", ["canceled_first", "created_first"])
async def test_a_reschedule_links_old_and_new_in_either_order(core: Core, order: str) -> None:
    ada = await connected(core)
    old_uri, new_uri = EVENT + "e1/invitees/i1", EVENT + "e2/invitees/i2"
    await deliver(core, created(ada))
    cancel = canceled(ada, rescheduled=True, new_invitee=new_uri)
    create = created(ada, event_id="e2", invitee_id="i2", old_invitee=old_uri)
    for body in [cancel, create] if order == "canceled_first" else [create, cancel]:
        assert (await deliver(core, body)).outcome == "applied"
    meetings = meetings_of(core.db, "u")
    old_meeting, old_invitees = meetings[EVENT + "e1"]
    new_meeting, new_invitees = meetings[EVENT + "e2"]
    assert old_meeting.status is MeetingStatus.CANCELED
    assert new_meeting.status is MeetingStatus.ACTIVE
    assert old_invitees[old_uri].rescheduled
    assert old_invitees[old_uri].new_invitee_uri == new_uri
    assert new_invitees[new_uri].old_invitee_uri == old_uri


async def test_no_shows_follow_calendly_time_not_arrival_order(core: Core) -> None:
    ada = await connected(core)
    await deliver(core, created(ada))
    mark = invitee_payload(host_uri=ada.uri, event_id="e1", invitee_id="i1", no_show_id="n1")
    marked = envelope("invitee_no_show.created", mark, ada.uri, "2030-03-05T15:00:00Z")
    unmarked = envelope("invitee_no_show.deleted", mark, ada.uri, "2030-03-05T16:00:00Z")
    await deliver(core, unmarked)
    await deliver(core, marked)  # older than the unmark: must not win
    _, invitees = meetings_of(core.db, "u")[EVENT + "e1"]
    assert invitees[EVENT + "e1/invitees/i1"].no_show is False
    again = invitee_payload(host_uri=ada.uri, event_id="e1", invitee_id="i1", no_show_id="n2")
    await deliver(core, envelope("invitee_no_show.created", again, ada.uri, "2030-03-05T17:00:00Z"))
    _, invitees = meetings_of(core.db, "u")[EVENT + "e1"]
    assert invitees[EVENT + "e1/invitees/i1"].no_show is True


async def test_group_events_keep_one_row_per_invitee(core: Core) -> None:
    ada = await connected(core)
    for n in range(3):
        await deliver(core, created(ada, invitee_id=f"g{n}"))
    await deliver(core, canceled(ada, invitee_id="g1", event_status="active"))
    meeting, invitees = meetings_of(core.db, "u")[EVENT + "e1"]
    assert len(invitees) == 3
    assert meeting.status is MeetingStatus.ACTIVE
    assert invitees[EVENT + "e1/invitees/g1"].status is MeetingStatus.CANCELED


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "envelope"),
        (b'{"event": "invitee.created", "payload": {"uri": 5}}', "payload"),
        (b'{"event": "invitee.created", "payload": {}}', "names no invitee"),
    ],
)
async def test_signed_but_unreadable_deliveries_are_stored_aside(
    core: Core, body: bytes, reason: str
) -> None:
    await connected(core)
    result = await deliver(core, body)
    assert result.outcome == "stored_aside"
    assert reason in (result.reason or "")
    (record,) = core.db.events.values()
    assert record.outcome == "unusable"
    assert record.user_id == "u"


async def test_a_delivery_for_an_unknown_user_is_stored_aside(core: Core) -> None:
    await connected(core)
    stranger = core.calendly.add_user("stranger@example.com")
    result = await core.handle_webhook(
        WebhookCommand(
            body=created(stranger),
            signature=sign(created(stranger), APP_KEY.reveal(), stamp(core)),
        )
    )
    assert result.outcome == "stored_aside"
    (record,) = core.db.events.values()
    assert record.user_id is None


async def test_a_delivery_about_someone_else_at_our_url_is_stored_aside(core: Core) -> None:
    await connected(core)
    stranger = core.calendly.add_user("stranger@example.com")
    result = await deliver(core, created(stranger))
    assert result.outcome == "stored_aside"
    assert meetings_of(core.db, "u") == {}


async def test_other_events_are_recorded_and_acknowledged(core: Core) -> None:
    ada = await connected(core)
    body = envelope(
        "event_type.updated", {"uri": "https://api.calendly.test/event_types/x"}, ada.uri
    )
    result = await deliver(core, body)
    assert result.outcome == "ignored"
    assert len(core.db.events) == 1


async def test_legacy_payloads_without_the_event_still_record_the_meeting(core: Core) -> None:
    ada = await connected(core)
    payload = invitee_payload(host_uri=ada.uri, event_id="e1", invitee_id="i1", legacy=True)
    result = await deliver(core, envelope("invitee.created", payload, ada.uri))
    assert result.outcome == "applied"
    assert EVENT + "e1" in meetings_of(core.db, "u")


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "t=1,t=2,v1=" + "0" * 64,
        "v0=abc",
        "t=abc,v1=" + "0" * 64,
        "t=1,v1=XYZ",
        "t=1",
    ],
)
async def test_malformed_signature_headers_are_rejected(core: Core, header: str) -> None:
    ada = await connected(core)
    with pytest.raises(InvalidSignature):
        await deliver(core, created(ada), signature=header or " ")
    assert core.db.events == {}


def delivery_set(host: FakeUser) -> list[bytes]:
    old_uri, new_uri = EVENT + "e1/invitees/i1", EVENT + "e2/invitees/i2"
    return [
        created(host),
        canceled(host, rescheduled=True, new_invitee=new_uri),
        created(host, event_id="e2", invitee_id="i2", old_invitee=old_uri),
        created(host, event_id="e3", invitee_id="i3"),
        canceled(host, event_id="e3", invitee_id="i3", canceler_type="host"),
        created(host, event_id="e4", invitee_id="i4"),
    ]


async def final_state(order: list[int]) -> dict[str, Any]:
    core = build_core()
    ada = await connected(core)
    bodies = delivery_set(ada)
    for index in order:
        await deliver(core, bodies[index])
    return {
        uri: (
            m.status,
            {k: (i.status, i.old_invitee_uri, i.new_invitee_uri) for k, i in inv.items()},
        )
        for uri, (m, inv) in meetings_of(core.db, "u").items()
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(min_value=0, max_value=5), min_size=6, max_size=14).filter(
        lambda xs: set(xs) == set(range(6))
    )
)
def test_any_order_with_repeats_converges_to_the_same_meetings(order: list[int]) -> None:
    reference = asyncio.run(final_state(list(range(6))))
    assert asyncio.run(final_state(order)) == reference


async def test_every_permutation_of_a_reschedule_pair_converges() -> None:
    states = [await final_state(list(p)) for p in itertools.permutations(range(3))]
    assert all(s == states[0] for s in states)


# --------------------------------------------------------------- what a forgery may cost
# RELIABILITY rows 29 and 8 of issue 10: nothing unsigned is decoded, and it costs the
# database at most one indexed lookup (a connection's own URL) or nothing (the shared URL).
FORGED = "t={t},v1=" + "0" * 64


class RecordingDecoder(WebhookDecoder):
    """The real decoder, noting each body it was asked to read."""

    def __init__(self) -> None:
        self.decoded = 0
        self._real = MsgspecWebhookDecoder()

    def decode(self, body: bytes) -> InboundWebhook:
        self.decoded += 1
        return self._real.decode(body)


def crowded(host: FakeUser, hosts: int) -> bytes:
    """A delivery naming `hosts` strangers as hosts before the real one."""
    payload = invitee_payload(host_uri=host.uri, event_id="e1", invitee_id="i1")
    strangers = [{"user": f"https://api.calendly.test/users/x{i}"} for i in range(hosts)]
    payload["scheduled_event"]["event_memberships"] = [*strangers, {"user": host.uri}]
    body = json.loads(envelope("invitee.created", payload, "https://api.calendly.test/users/y"))
    return json.dumps(body).encode()


def handler(core: Core, decoder: WebhookDecoder) -> HandleWebhookEvent:
    return HandleWebhookEvent(UnitOfWorkLedger(core.db.factory()), decoder, core.clock, [APP_KEY])


async def test_a_forgery_on_the_shared_url_is_refused_without_the_database(core: Core) -> None:
    ada = await connected(core)
    decoder = RecordingDecoder()
    opened = core.db.units_opened
    with pytest.raises(InvalidSignature):
        await handler(core, decoder)(
            WebhookCommand(body=crowded(ada, 45_000), signature=FORGED.format(t=stamp(core)))
        )
    assert core.db.units_opened == opened
    assert core.db.route_lookups == []
    assert decoder.decoded == 0


async def test_a_forgery_on_a_connections_url_costs_one_lookup_and_no_decoding(
    core: Core,
) -> None:
    ada = await connected(core)
    token = core.db.connections["u"].webhook_token
    decoder = RecordingDecoder()
    with pytest.raises(InvalidSignature):
        await handler(core, decoder)(
            WebhookCommand(
                body=crowded(ada, 1_000),
                signature=FORGED.format(t=stamp(core)),
                webhook_token=token,
            )
        )
    assert core.db.route_lookups == [(token, ())]
    assert decoder.decoded == 0
    assert meetings_of(core.db, "u") == {}


@pytest.mark.parametrize("token", ["", "x", "../../etc", "a" * 129, "tok en", "ü" * 24])
async def test_a_token_that_cannot_be_ours_is_refused_without_a_lookup(
    core: Core, token: str
) -> None:
    ada = await connected(core)
    with pytest.raises(InvalidSignature):
        await handler(core, RecordingDecoder())(
            WebhookCommand(
                body=created(ada), signature=FORGED.format(t=stamp(core)), webhook_token=token
            )
        )
    assert core.db.route_lookups == []


async def test_a_forgery_is_refused_while_the_database_is_down(core: Core) -> None:
    ada = await connected(core)
    core.db.unavailable = True
    with pytest.raises(InvalidSignature):  # 401, not 503: the app key decides
        await core.handle_webhook(
            WebhookCommand(body=created(ada), signature=FORGED.format(t=stamp(core)))
        )


async def test_a_signed_delivery_is_routed_with_one_capped_lookup(core: Core) -> None:
    ada = await connected(core)
    near = crowded(ada, MAX_ROUTE_CANDIDATES - 2)  # creator + strangers + ada: within the cap
    result = await core.handle_webhook(
        WebhookCommand(body=near, signature=sign(near, APP_KEY.reveal(), stamp(core)))
    )
    assert result.outcome == "applied"
    assert result.user_id == "u"
    far = crowded(ada, 5_000)  # ada is host number 5,002: past the cap, stored aside
    aside = await core.handle_webhook(
        WebhookCommand(body=far, signature=sign(far, APP_KEY.reveal(), stamp(core)))
    )
    assert aside.outcome == "stored_aside"
    assert [len(uris) for _, uris in core.db.route_lookups[-2:]] == [
        MAX_ROUTE_CANDIDATES,
        MAX_ROUTE_CANDIDATES,
    ]


async def test_the_shared_url_accepts_only_the_apps_keys(core: Core) -> None:
    """A connection's own key signs only deliveries to its own URL (it is created there)."""
    ada = await connected(core)
    body = created(ada)
    own = core.db.connections["u"].signing_key
    assert own is not None
    with pytest.raises(InvalidSignature):
        await core.handle_webhook(
            WebhookCommand(body=body, signature=sign(body, own.reveal(), stamp(core)))
        )


class KeepingLedger(UnitOfWorkLedger):
    """Keeps the routes it found by token, as the service's ledger does (DR-60), and hands
    them out marked `kept` until told to read afresh."""

    def __init__(self, core: Core) -> None:
        super().__init__(core.db.factory())
        self.kept: dict[str, Route] = {}
        self.asked: list[bool] = []  # `fresh`, call by call

    async def route(
        self,
        *,
        webhook_token: str | None = None,
        calendly_user_uris: Sequence[str] = (),
        fresh: bool = False,
    ) -> Route | None:
        self.asked.append(fresh)
        if webhook_token is not None and not fresh and webhook_token in self.kept:
            return self.kept[webhook_token]
        found = await super().route(
            webhook_token=webhook_token, calendly_user_uris=calendly_user_uris
        )
        if webhook_token is not None and found is not None:
            self.kept[webhook_token] = msgspec.structs.replace(found, kept=True)
        return found


def keeping(core: Core) -> tuple[HandleWebhookEvent, KeepingLedger]:
    ledger = KeepingLedger(core)
    return HandleWebhookEvent(ledger, MsgspecWebhookDecoder(), core.clock, [APP_KEY]), ledger


def signed_for(core: Core, body: bytes, key: str, token: str) -> WebhookCommand:
    return WebhookCommand(body=body, signature=sign(body, key, stamp(core)), webhook_token=token)


async def with_a_kept_route(
    core: Core,
) -> tuple[FakeUser, HandleWebhookEvent, KeepingLedger, Connection, str]:
    """A connected user whose first delivery was applied, its route now kept by the ledger."""
    ada = await connected(core)
    handle, ledger = keeping(core)
    stored = core.db.connections["u"]
    token = stored.webhook_token
    assert token is not None
    assert stored.signing_key is not None
    first = await handle(signed_for(core, created(ada), stored.signing_key.reveal(), token))
    assert first.outcome == "applied"
    assert ledger.kept[token].kept
    return ada, handle, ledger, stored, token


async def test_a_forgery_on_a_kept_route_costs_one_lookup_still(core: Core) -> None:
    """The kept route's key does not verify it: one lookup afresh (the key may have been
    replaced), which does not either, and it is refused (RELIABILITY promise 9)."""
    ada, handle, _, _, token = await with_a_kept_route(core)
    core.db.route_lookups.clear()
    with pytest.raises(InvalidSignature):
        await handle(signed_for(core, created(ada, "e2"), "not-the-key", token))
    assert core.db.route_lookups == [(token, ())]
    assert f"{EVENT}e2" not in meetings_of(core.db, "u")


async def test_a_route_replaced_after_it_was_kept_judges_the_delivery_again(core: Core) -> None:
    """The key is replaced (a new subscription) after the route was kept: a delivery signed
    with the new key is verified with a route read afresh, and applied."""
    ada, handle, _, stored, token = await with_a_kept_route(core)
    core.db.connections["u"] = msgspec.structs.replace(stored, signing_key=Secret("key-new"))
    core.db.route_lookups.clear()
    second = await handle(signed_for(core, created(ada, "e2"), "key-new", token))
    assert second.outcome == "applied"
    assert core.db.route_lookups == [(token, ())]  # the kept route's key failed: read again
    assert f"{EVENT}e2" in meetings_of(core.db, "u")


async def test_a_delivery_under_a_route_gone_since_it_was_kept_is_judged_again(
    core: Core,
) -> None:
    """Disconnected after the route was kept: a delivery the kept route would apply (the
    app's key vouches for it) writes nothing under it (RouteChanged), and is judged again
    with the route as it is now: none, so it is stored aside, not applied."""
    ada, handle, _, stored, token = await with_a_kept_route(core)
    core.db.connections["u"] = stored.disconnected(core.clock.now())
    result = await handle(signed_for(core, created(ada, "e2"), APP_KEY.reveal(), token))
    assert result.outcome == "stored_aside"
    assert result.reason == "no connected user for this delivery"
    assert f"{EVENT}e2" not in meetings_of(core.db, "u")


async def test_the_old_key_after_a_new_one_is_refused_though_its_route_was_kept(
    core: Core,
) -> None:
    """The kept route still holds the old key, which verifies the delivery in memory; its
    write finds the route changed (nothing stored), and judged again with the route read
    afresh, the old key no longer verifies: 401."""
    ada, handle, _, stored, token = await with_a_kept_route(core)
    assert stored.signing_key is not None
    old_key = stored.signing_key.reveal()
    core.db.connections["u"] = msgspec.structs.replace(stored, signing_key=Secret("key-new"))
    with pytest.raises(InvalidSignature):
        await handle(signed_for(core, created(ada, "e2"), old_key, token))
    assert f"{EVENT}e2" not in meetings_of(core.db, "u")
    assert not any(":e2" in e or "/e2" in e for e in core.db.events)


async def test_a_route_that_keeps_changing_stores_nothing_and_says_try_again(
    core: Core,
) -> None:
    ada = await connected(core)

    class Moving(KeepingLedger):
        async def record(self, delivery: DeliveryRecord) -> bool:
            raise RouteChanged(delivery.route.connection_id if delivery.route else "?")

    ledger = Moving(core)
    handle = HandleWebhookEvent(ledger, MsgspecWebhookDecoder(), core.clock, [APP_KEY])
    token = core.db.connections["u"].webhook_token
    assert token is not None
    with pytest.raises(StorageUnavailable, match="kept changing"):
        await handle(signed_for(core, created(ada), APP_KEY.reveal(), token))
    assert ledger.asked == [False, True, True]  # judged three times, afresh after the first
