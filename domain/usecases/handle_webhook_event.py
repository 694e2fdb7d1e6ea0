"""Take one webhook delivery: verify, route, deduplicate and apply, committed before the answer."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Literal

import msgspec

from domain.errors import InvalidSignature, RouteChanged, StorageUnavailable, UnusablePayload
from domain.ports import (
    Clock,
    DeliveryLedger,
    DeliveryRecord,
    Route,
    UnitOfWorkFactory,
    WebhookOutcome,
)
from domain.secret import Secret
from domain.signature import (
    SignatureHeader,
    check_timestamp,
    parse_signature_header,
    signed_with,
)
from domain.webhooks import InboundWebhook, WebhookDecoder, digest

DEFAULT_TOLERANCE = timedelta(seconds=180)
# A delivery on the shared URL is routed by its creator and hosts: at most this many are
# looked up (in one query). Calendly's own limit on an event's hosts is far below it.
MAX_ROUTE_CANDIDATES = 100
# Callback tokens are `secrets.token_urlsafe` strings (24 characters for the 18 bytes the
# service uses); anything else is refused before the database is asked.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{8,128}")
# How many times a delivery is judged when its route keeps changing under it (RouteChanged):
# once with the route the ledger has, then with routes read afresh.
ROUTE_ATTEMPTS = 3


def plausible_token(token: str | None) -> bool:
    """Whether `token` could name a connection's callback URL (no lookup for junk)."""
    return token is not None and _TOKEN.fullmatch(token) is not None


def route_candidates(inbound: InboundWebhook) -> list[str]:
    """The Calendly users a shared-URL delivery may belong to: creator first, then hosts."""
    candidates = (inbound.created_by, *inbound.host_user_uris)
    return list(dict.fromkeys(c for c in candidates if c))[:MAX_ROUTE_CANDIDATES]


class WebhookCommand(msgspec.Struct, frozen=True, kw_only=True):
    body: bytes
    signature: str | None
    # The path segment of the callback URL (each connection has its own); None for the
    # shared URL, where the delivery is routed by its `created_by` and hosts.
    webhook_token: str | None = None


class WebhookResult(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Literal["applied", "ignored", "duplicate", "stored_aside"]
    user_id: str | None = None
    event: str | None = None
    reason: str | None = None


class UnitOfWorkLedger(DeliveryLedger):
    """A ledger of one unit of work per call: the reference the batching adapters are held to
    (their contract tests compare the two), and the ledger of the in-memory fakes."""

    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def route(
        self,
        *,
        webhook_token: str | None = None,
        calendly_user_uris: Sequence[str] = (),
        fresh: bool = False,
    ) -> Route | None:
        async with self._uow() as uow:  # always fresh: nothing is kept between calls
            return await uow.routes.find(
                webhook_token=webhook_token, calendly_user_uris=calendly_user_uris
            )

    async def record(self, delivery: DeliveryRecord) -> bool:
        route = delivery.route
        async with self._uow() as uow:
            # A route exists exactly while its connection is connected: it is the connection
            # the delivery is recorded and applied under (no second lookup).
            if route is not None:
                await uow.act_as(route.user_id)
            is_new = await uow.webhook_events.record(
                event_id=delivery.event_id,
                event_type=delivery.event_type,
                payload=delivery.payload,
                connection=route,
                outcome=delivery.outcome,
                reason=delivery.reason,
                change=delivery.change,
            )
            await uow.commit()  # a duplicate wrote nothing: committing costs what rollback would
        return is_new


class HandleWebhookEvent:
    """The promise: nothing takes effect unless signed; what is signed is acknowledged.

    Raises InvalidSignature (answer 401, nothing stored) when no configured key verifies the
    delivery within the tolerance. Everything signed returns a result (answer 2xx) once its
    effect, or its record when it cannot be used, is committed: duplicates take no effect.

    What an unsigned request may cost is bounded (RELIABILITY promise 9): the header and the
    app's keys are checked in memory; on the shared URL nothing else is tried, on a
    connection's own URL one indexed lookup fetches that connection's key. The body is
    decoded only once a key vouches for it, and routing by URIs is one capped query.

    The ledger finds routes and records deliveries; the service's shares round trips and
    commits among concurrent deliveries (DR-48) and keeps the routes it found (DR-60), which
    this code neither sees nor relies on: a kept route's key that does not verify is looked up
    afresh before the delivery is refused, and a route that changed before the write is
    refused by the ledger (RouteChanged), so the delivery is judged again from the start.
    """

    def __init__(
        self,
        ledger: DeliveryLedger,
        decoder: WebhookDecoder,
        clock: Clock,
        app_signing_keys: Sequence[Secret],
        tolerance: timedelta = DEFAULT_TOLERANCE,
    ) -> None:
        self._ledger = ledger
        self._decoder = decoder
        self._clock = clock
        self._app_keys = tuple(app_signing_keys)
        self._tolerance = tolerance

    async def __call__(self, command: WebhookCommand) -> WebhookResult:
        fresh = False
        for _ in range(ROUTE_ATTEMPTS):
            try:
                return await self._handle(command, fresh=fresh)
            except RouteChanged:
                fresh = True  # judged by a route that was out of date: nothing was written
        raise StorageUnavailable(
            "the delivery's connection kept changing while it was written; nothing was stored"
        )

    async def _handle(self, command: WebhookCommand, *, fresh: bool) -> WebhookResult:
        header = parse_signature_header(command.signature)
        check_timestamp(header, self._clock.now(), self._tolerance)
        # The app's keys are checked in memory first. Where they do not vouch for the body,
        # only a connection's own URL can: one indexed lookup of its key, nothing before it.
        app_signed = signed_with(header, command.body, self._app_keys)
        if not app_signed and not plausible_token(command.webhook_token):
            raise InvalidSignature("no configured signing key matches")
        route: Route | None = None
        if command.webhook_token is not None:
            route = await self._ledger.route(webhook_token=command.webhook_token, fresh=fresh)
            if not app_signed and not _own_signed(header, command.body, route):
                if route is not None and route.kept:
                    # A route kept from earlier, whose key may have been replaced since: read
                    # again before refusing (a forgery still costs one lookup at most).
                    route = await self._ledger.route(
                        webhook_token=command.webhook_token, fresh=True
                    )
                if not _own_signed(header, command.body, route):
                    raise InvalidSignature("no configured signing key matches")
        # Signed: only now is the body decoded.
        inbound, problem = self._decode(command.body)
        if command.webhook_token is None and inbound is not None:
            route = await self._ledger.route(
                calendly_user_uris=route_candidates(inbound), fresh=fresh
            )
        outcome, reason = self._judge(inbound, problem, route)
        key = inbound.dedup_key() if inbound else f"unparsable:sha256:{digest(command.body)}"
        scope = route.connection_id if route is not None else "unrouted"
        # Recorded and, when new and usable, applied; committed before this returns.
        is_new = await self._ledger.record(
            DeliveryRecord(
                event_id=f"{scope}:{key}",
                event_type=inbound.event if inbound else "unknown",
                payload=command.body,
                route=route,
                outcome=outcome,
                reason=reason,
                change=inbound.change if outcome == "applied" and inbound else None,
            )
        )
        if not is_new:
            return WebhookResult(
                outcome="duplicate",
                user_id=route.user_id if route else None,
                event=inbound.event if inbound else None,
            )
        return WebhookResult(
            outcome="stored_aside" if outcome == "unusable" else outcome,
            user_id=route.user_id if route else None,
            event=inbound.event if inbound else None,
            reason=reason,
        )

    def _decode(self, body: bytes) -> tuple[InboundWebhook | None, str | None]:
        try:
            return self._decoder.decode(body), None
        except UnusablePayload as exc:
            return None, exc.reason

    @staticmethod
    def _judge(
        inbound: InboundWebhook | None, problem: str | None, route: Route | None
    ) -> tuple[WebhookOutcome, str | None]:
        if inbound is None:
            return "unusable", problem or "the payload cannot be read"
        if route is None:
            return "unusable", "no connected user for this delivery"
        if not route.calendly_user_uri or not inbound.concerns(route.calendly_user_uri):
            return "unusable", "the delivery is not about this connection's Calendly user"
        if inbound.change is None:
            return "ignored", f"{inbound.event} is stored but not acted on"
        return "applied", None


def _own_signed(header: SignatureHeader, body: bytes, route: Route | None) -> bool:
    """Whether `route`'s connection's own signing key verifies `body`."""
    key = route.signing_key if route is not None else None
    return key is not None and signed_with(header, body, (key,))
