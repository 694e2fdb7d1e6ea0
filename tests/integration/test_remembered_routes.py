"""Routes remembered by the webhook path's ledger (DR-54): a delivery to a remembered connection
needs no lookup, yet nothing is ever written under a route that is no longer stored as it was
remembered. A disconnect or a new signing key is seen by the very transaction that would have
written the delivery, and the delivery is then judged again from a route read now: the caller
hears what it would have heard from a ledger without memory."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from adapters.calendly.webhook_decoder import MsgspecWebhookDecoder
from adapters.crypto import AesGcmTokenCipher
from adapters.postgres.group_commit import PostgresDeliveryLedger
from adapters.postgres.unit_of_work import unit_of_work_factory
from adapters.system import SystemClock
from domain.errors import InvalidSignature, RouteChanged
from domain.meetings import Meeting
from domain.ports import DeliveryRecord, MeetingChange, Route, UnitOfWorkFactory
from domain.secret import Secret
from domain.usecases.handle_webhook_event import (
    HandleWebhookEvent,
    UnitOfWorkLedger,
    WebhookCommand,
)
from tests.support.connections import EV, account, add, cid, connection, owner_sql
from tests.support.deliveries import envelope, invitee_payload, sign

TOKEN = "token-ada1"  # ada's connection's own callback URL (tests.support.connections)


@pytest.fixture
async def uow(pool: Any, cipher: AesGcmTokenCipher) -> UnitOfWorkFactory:
    factory = unit_of_work_factory(pool, cipher)
    await add(factory, connection("ada", 1, cid(1)))
    await add(factory, connection("bob", 2, cid(2)))
    return factory


@pytest.fixture
def ledger(pool: Any, cipher: AesGcmTokenCipher, uow: UnitOfWorkFactory) -> PostgresDeliveryLedger:
    return PostgresDeliveryLedger(pool, cipher, UnitOfWorkLedger(uow), max_running=1)


def handler(ledger: PostgresDeliveryLedger) -> HandleWebhookEvent:
    """The use case over the ledger; the app's own key is one no test signs with."""
    return HandleWebhookEvent(
        ledger, MsgspecWebhookDecoder(), SystemClock(), [Secret("an-app-key-unused-here")]
    )


def booked(event: str, *, key: str = "key-1") -> WebhookCommand:
    """ada's booking `event`, as Calendly sends it to her connection's URL, signed with `key`."""
    host = account(1).user_uri
    payload = invitee_payload(host_uri=host, event_id=event, invitee_id="i1")
    body = envelope("invitee.created", payload, host)
    return WebhookCommand(body=body, signature=sign(body, key), webhook_token=TOKEN)


def record_of(route: Route | None, event: str) -> DeliveryRecord:
    """A new booking's record under `route`, as the use case would write it."""
    owner = route.connection_id if route is not None else "unrouted"
    return DeliveryRecord(
        event_id=f"{owner}:{event}",
        event_type="invitee.created",
        payload=b"{}",
        route=route,
        outcome="applied",
        change=MeetingChange(meeting=Meeting(event_uri=EV + event)),
    )


def stored(url: str) -> dict[str, list[Any]]:
    """The meetings and recorded deliveries, as the owner sees them."""
    return {
        "meetings": sorted(owner_sql(url, "SELECT user_id, event_uri FROM meetings")),
        "events": sorted(owner_sql(url, "SELECT event_id FROM calendly_webhook_events")),
    }


async def new_signing_key(uow: UnitOfWorkFactory, key: str) -> None:
    """ada reconnected: her connection's webhook now signs with `key`."""
    async with uow("ada") as unit:
        current = await unit.connections.get("ada")
        assert current is not None
        await unit.connections.save(msgspec.structs.replace(current, signing_key=Secret(key)))
        await unit.commit()


def disconnect(url: str) -> None:
    """ada disconnects: her secrets wiped, her route gone (as the disconnect use case leaves it)."""
    owner_sql(
        url,
        "UPDATE calendar_connections SET status = 'disconnected', access_token_enc = NULL,"
        " refresh_token_enc = NULL, webhook_signing_key_enc = NULL WHERE id = %s",
        cid(1),
    )


async def test_a_route_found_by_token_is_remembered(ledger: PostgresDeliveryLedger) -> None:
    first = await ledger.route(webhook_token=TOKEN)
    again = await ledger.route(webhook_token=TOKEN)
    assert first is not None
    assert again is not None
    assert not first.remembered  # read just now
    assert again.remembered_token == TOKEN
    assert (again.user_id, again.connection_id) == ("ada", cid(1))
    assert again.signing_key is not None
    assert again.signing_key.reveal() == "key-1"
    assert ledger.routes.batches == 1  # the second answer came from memory
    fresh = await ledger.route(webhook_token=TOKEN, fresh=True)
    assert fresh is not None
    assert not fresh.remembered
    assert ledger.routes.batches == 2


async def test_routes_by_uri_and_unknown_tokens_are_read_every_time(
    ledger: PostgresDeliveryLedger,
) -> None:
    for _ in range(2):
        by_uri = await ledger.route(calendly_user_uris=[account(2).user_uri])
        assert by_uri is not None
        assert not by_uri.remembered
        assert await ledger.route(webhook_token="token-nobody") is None
    assert ledger.routes.batches == 4


async def test_memory_is_bounded_in_size_and_time(
    pool: Any, cipher: AesGcmTokenCipher, uow: UnitOfWorkFactory
) -> None:
    one = PostgresDeliveryLedger(pool, cipher, UnitOfWorkLedger(uow), remembered_routes=1)
    for token in (TOKEN, "token-bob2", TOKEN):  # bob's pushes ada's out
        assert await one.route(webhook_token=token) is not None
    assert one.routes.batches == 3
    assert await one.route(webhook_token=TOKEN) is not None
    assert one.routes.batches == 3  # ada's, the newest, stayed
    brief = PostgresDeliveryLedger(pool, cipher, UnitOfWorkLedger(uow), remember_seconds=0)
    for _ in range(2):
        assert await brief.route(webhook_token=TOKEN) is not None
    assert brief.routes.batches == 2
    none = PostgresDeliveryLedger(pool, cipher, UnitOfWorkLedger(uow), remembered_routes=0)
    for _ in range(2):
        assert await none.route(webhook_token=TOKEN) is not None
    assert none.routes.batches == 2


async def test_a_current_remembered_route_is_checked_and_written(
    ledger: PostgresDeliveryLedger, database_url: str
) -> None:
    handle = handler(ledger)
    assert (await handle(booked("e1"))).outcome == "applied"
    assert (await handle(booked("e2"))).outcome == "applied"
    assert ledger.remembered_answers == 1
    assert ledger.route_changes == 0
    assert ledger.routes.batches == 1
    assert stored(database_url)["meetings"] == [("ada", EV + "e1"), ("ada", EV + "e2")]


async def test_after_a_disconnect_nothing_is_written_under_the_remembered_route(
    ledger: PostgresDeliveryLedger, database_url: str
) -> None:
    """ada disconnects after the ledger remembered her route. A delivery signed with her old
    key verifies against the remembered key, but its batch finds the route gone and writes
    nothing; judged again from the route read now (none), it is refused as it would have been
    without memory."""
    handle = handler(ledger)
    assert (await handle(booked("e1"))).outcome == "applied"
    assert await ledger.route(webhook_token=TOKEN) is not None  # remembered
    disconnect(database_url)
    before = stored(database_url)
    with pytest.raises(InvalidSignature):
        await handle(booked("e2"))
    assert ledger.route_changes == 1
    assert stored(database_url) == before
    assert await ledger.route(webhook_token=TOKEN) is None  # forgotten, and read again


async def test_a_new_signing_key_is_seen_both_ways(
    ledger: PostgresDeliveryLedger, uow: UnitOfWorkFactory, database_url: str
) -> None:
    """ada reconnects with a new key while the old one is remembered. A delivery signed with
    the new key is applied (the remembered key does not verify it, so the route is read
    again); one signed with a key that was current when remembered but is no longer is
    refused (its batch sees another key stored)."""
    handle = handler(ledger)
    assert (await handle(booked("e1"))).outcome == "applied"
    await new_signing_key(uow, "key-1b")
    assert (await handle(booked("e2", key="key-1b"))).outcome == "applied"
    assert ledger.routes.batches == 2
    await new_signing_key(uow, "key-1c")
    with pytest.raises(InvalidSignature):
        await handle(booked("e3", key="key-1b"))
    assert ledger.route_changes == 1
    assert (await handle(booked("e4", key="key-1c"))).outcome == "applied"
    assert stored(database_url)["meetings"] == [
        ("ada", EV + "e1"),
        ("ada", EV + "e2"),
        ("ada", EV + "e4"),
    ]


async def test_a_forgery_on_a_remembered_route_costs_one_lookup(
    ledger: PostgresDeliveryLedger,
) -> None:
    """The remembered key does not verify it, the key read now neither: one lookup, refused."""
    handle = handler(ledger)
    assert await ledger.route(webhook_token=TOKEN) is not None
    with pytest.raises(InvalidSignature):
        await handle(booked("e1", key="not-adas-key"))
    assert ledger.routes.batches == 2


async def test_a_changed_route_fails_only_its_own_delivery(
    ledger: PostgresDeliveryLedger, database_url: str
) -> None:
    """In one batch with bob's deliveries, ada's remembered route turns out gone: bob's are
    written all the same, and only ada's caller hears RouteChanged."""
    assert await ledger.route(webhook_token=TOKEN) is not None
    adas = await ledger.route(webhook_token=TOKEN)
    bobs = await ledger.route(calendly_user_uris=[account(2).user_uri])
    assert adas is not None
    assert adas.remembered
    disconnect(database_url)
    # All four arrive before the first batch starts: they share it.
    answers = await asyncio.gather(
        ledger.record(record_of(bobs, "b1")),
        ledger.record(record_of(bobs, "b2")),
        ledger.record(record_of(adas, "a1")),
        ledger.record(record_of(bobs, "b3")),
        return_exceptions=True,
    )
    assert list(answers[:2]) == [True, True]
    assert isinstance(answers[2], RouteChanged)
    assert answers[3] is True
    assert ledger.records.batches == 1
    assert ledger.fallbacks == 1  # bob's then written one by one
    assert ledger.route_changes == 1
    assert stored(database_url)["meetings"] == [("bob", EV + b) for b in ("b1", "b2", "b3")]


async def test_a_remembered_route_found_again_meanwhile_is_not_written(
    ledger: PostgresDeliveryLedger, database_url: str
) -> None:
    """A delivery holding a remembered route that memory no longer holds (found again, or
    forgotten) cannot be checked against what it was found with: it is handled again."""
    assert await ledger.route(webhook_token=TOKEN) is not None
    old = await ledger.route(webhook_token=TOKEN)
    assert old is not None
    assert old.remembered
    assert await ledger.route(webhook_token=TOKEN, fresh=True) is not None  # replaces it
    with pytest.raises(RouteChanged):
        await ledger.record(record_of(old, "a1"))
    ledger.forget_routes()
    current = await ledger.route(webhook_token=TOKEN)
    assert current is not None
    assert not current.remembered
    assert stored(database_url)["meetings"] == []
